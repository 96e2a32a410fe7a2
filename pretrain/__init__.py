"""mmctr: pretrain."""
