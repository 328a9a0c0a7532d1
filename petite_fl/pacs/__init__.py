"""A site's PACS (#28): where it is and how to log in (`connection`), DICOMweb (`dicomweb`) and DIMSE
(`dimse`) clients behind one interface, and moving series to and from it (`transfer`).

Sits on the data floor: it imports only the ground floor (errors, atomic) and its libraries
(pydicom, dicomweb-client, pynetdicom), so the importer and inference can both use it.
"""
