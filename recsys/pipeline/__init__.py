"""``mmctr pipeline``: the whole system as one resumable job of TorchX stages (``recsys.pipeline.run``)."""
