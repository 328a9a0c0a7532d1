"""What of an imported series' header may leave `private/`: coded values and names from a known vocabulary.

Free-text DICOM fields (Manufacturer, ManufacturerModelName, the reconstruction's name, series
and institution names) are typed by people: a patient's name or birth date, or escape codes,
can sit in any of them. So provenance files and the drafted scanner YAML never copy such text:
a vendor becomes one of `VENDORS` (else "other"), a model travels only when it is in `MODELS`,
a reconstruction becomes its family and PSF/TOF flags, a tracer its common name. The raw text
stays in the site's private mapping, for the person who reviews the drafted scanner.
"""

from __future__ import annotations

import re
from typing import Any

OTHER = "other"

#: vendor → the words that name it in a Manufacturer field (as whole words, case-insensitive)
VENDORS: dict[str, tuple[str, ...]] = {
    "Siemens": ("siemens", "cti"),
    "GE": ("ge", "gems", "general electric"),
    "Philips": ("philips", "adac"),
    "United Imaging": ("united imaging", "uih", "uihealthcare"),
    "Canon/Toshiba": ("canon", "toshiba"),
    "Hitachi": ("hitachi",),
    "Mediso": ("mediso",),
    "Neusoft": ("neusoft",),
    "MinFound": ("minfound",),
    "Sinounion": ("sinounion",),
    "Positron": ("positron",),
}

#: PET models by the name that travels → other spellings scanners write (compared without case,
#: spaces or punctuation other than '+'); ECAT numbers are what the ECAT reader makes of system_type
MODELS: dict[str, tuple[str, ...]] = {
    "HR+": ("ECAT HR+", "EXACT HR+", "ECAT EXACT HR+"),
    "HRRT": ("ECAT HRRT",),
    "ECAT ACCEL": ("ACCEL",),
    "ECAT EXACT": ("EXACT",),
    **{f"ECAT {n}": () for n in (921, 922, 925, 931, 951, 953, 961, 962, 966)},
    **{f"Biograph {n}": () for n in (6, 16, 40, 64)},
    "Biograph TruePoint": (),
    "Biograph mCT": (*(f"Biograph{n}_mCT" for n in (20, 40, 64, 128)), "Biograph mCT Flow"),
    "Biograph mMR": (),
    "Biograph Vision": ("Biograph Vision 450", "Biograph Vision 600"),
    "Biograph Vision Quadra": (),
    "Advance": (),
    **{f"Discovery {m}": () for m in ("LS", "ST", "STE", "RX", "600", "610", "690", "710", "IQ", "MI", "MI DR")},
    "Omni Legend": (),
    "SIGNA PET/MR": (),
    "Allegro": ("Allegro Body(C)",),
    "Gemini GXL": ("GEMINI GXL 16",),
    "Gemini TF": ("GEMINI TF TOF 16", "GEMINI TF TOF 64", "Gemini TF Big Bore"),
    "Ingenuity TF": ("Ingenuity TF PET/CT",),
    "Vereos": ("Vereos PET/CT",),
    **{f"uMI {m}": () for m in ("510", "550", "780", "Vista")},
    "uEXPLORER": (),
    "Celesteion": (),
    "Cartesion Prime": (),
}

#: reconstruction families, first match wins; PSF and TOF are flags on top
RECON_FAMILIES = (("FBP", r"fbp|back.?proj|filtered"), ("BSREM", r"bsrem|q\.?\s?clear|block.sequential"),
                  ("RAMLA", r"ramla|row.action"), ("OSEM", r"os-?em|ordered.subset|true\s?x|vpfx|blob-os|ultra\s?hd"),
                  ("MLEM", r"ml-?em|maximum.likelihood"))
RECON_FLAGS = (("PSF", r"psf|point.spread|true\s?x|sharp\s?ir|vpfxs|ultra\s?hd|resolution"),
               ("TOF", r"tof|time.of.flight|vpfx|ultra\s?hd|-tf\b"))

TRACERS: dict[str, tuple[str, ...]] = {
    "FDG": ("fdg", "fluorodeoxyglucose"), "florbetapir": ("florbetapir", "av45", "av 45", "amyvid"),
    "florbetaben": ("florbetaben", "fbb", "neuraceq"), "flutemetamol": ("flutemetamol", "vizamyl"),
    "PiB": ("pib", "pittsburgh compound b"), "flortaucipir": ("flortaucipir", "av1451", "av 1451", "tauvid"),
    "MK-6240": ("mk6240", "mk 6240"), "PI-2620": ("pi2620", "pi 2620"), "NAV4694": ("nav4694", "flutafuranol"),
    "FET": ("fet",), "FDOPA": ("fdopa", "f dopa"), "FLT": ("flt",), "choline": ("choline", "fch"),
    "PSMA": ("psma", "dcfpyl"), "DOTATATE": ("dotatate",), "DOTATOC": ("dotatoc",), "NaF": ("naf",),
    "water": ("h2o", "water"), "ammonia": ("nh3", "ammonia"), "rubidium": ("rb82", "rubidium"),
    "FES": ("fes", "fluoroestradiol"), "FMISO": ("fmiso",), "FAPI": ("fapi",), "UCB-J": ("ucbj", "ucb j"),
}


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def _named(text: Any, table: dict[str, tuple[str, ...]]) -> str | None:
    """The one entry of `table` whose words occur in `text`; 'other' for none or several; None for no text."""
    if text is None or not str(text).strip():
        return None
    words = _words(str(text))
    hits = {name for name, aliases in table.items() if any(_words(alias) in words for alias in aliases)}
    return hits.pop() if len(hits) == 1 else OTHER


def vendor(text: Any) -> str | None:
    """A Manufacturer field as a vendor of VENDORS, 'other', or None when the header has none."""
    return _named(text, VENDORS)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", text.lower())


_MODEL_KEYS = {_key(alias): name for name, aliases in MODELS.items() for alias in (name, *aliases)}


def model(text: Any) -> str | None:
    """A model field's name in MODELS, else None: an unknown model is omitted, never copied."""
    return None if text is None else _MODEL_KEYS.get(_key(str(text)))


def reconstruction(text: Any) -> str | None:
    """'OSEM3D 4i21s PSF+TOF' → 'OSEM + PSF + TOF'; unknown text → 'other'; None for no text."""
    if text is None or not str(text).strip():
        return None
    low = str(text).lower()
    family = next((name for name, pattern in RECON_FAMILIES if re.search(pattern, low)), None)
    if family is None:
        return OTHER
    return " + ".join([family, *(flag for flag, pattern in RECON_FLAGS if family != "FBP" and re.search(pattern, low))])


def modality(text: Any) -> str | None:
    return None if text is None else "PT" if str(text).strip().upper() in ("PT", "PET") else OTHER


def public_header(info: dict[str, Any]) -> dict[str, str | None]:
    """The header facts a provenance file may hold, under their BIDS-PET keys, from the vocabularies only."""
    return {
        "Manufacturer": vendor(info.get("Manufacturer")),
        "ManufacturersModelName": model(info.get("ManufacturersModelName")),
        "ReconMethodName": reconstruction(" ".join(str(info[k]) for k in ("ReconMethodName", "ReconstructionMethod")
                                                    if info.get(k)) or None),
        "Modality": modality(info.get("Modality")),
        "TracerName": _named(info.get("TracerName"), TRACERS),
    }
