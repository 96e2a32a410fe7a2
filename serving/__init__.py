"""mmctr: serving."""
