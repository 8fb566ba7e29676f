"""Integrations with other tools: ``bsrn.integrations.spandrel`` registers the BSRN family in
spandrel, the model loader behind chaiNNer and ComfyUI."""
