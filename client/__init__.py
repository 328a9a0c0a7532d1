"""Site side of petite-fl: the Flower ClientApp (wiring) and the site's kit."""
