"""The site half of a federated run: the endpoint answering each message, the worker that trains
and evaluates, the site's own policy and run-key whitelist, its backbone cache and its folders. Flower-free."""
