"""mmctr: torchx_components."""
