"""The remote-code files `vlmlab export` copies into an exported folder (configuration_vlmlab.py and
modeling_vlmlab.py); transformers imports them from there with `trust_remote_code=True`."""
