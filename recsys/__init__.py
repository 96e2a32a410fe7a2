"""mmctr: recsys."""
