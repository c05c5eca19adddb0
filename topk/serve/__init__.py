"""``topk serve``: the HTTP API over an output directory
(``topk.serve.app.create_app``) and its Prometheus metrics. No Beam."""
from topk.serve.app import create_app

__all__ = ["create_app"]
