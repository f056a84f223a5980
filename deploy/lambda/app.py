"""AWS Lambda entry point for a vistrain export (container image or zip with the `serve` extra).

Configure the function's handler as ``app.handler`` and put the export folder at ``model/`` next to
this file (or set VISTRAIN_MODEL). Invoke through a function URL or API Gateway with the image as a
binary body (``Content-Type: image/jpeg``); add ``?heatmap=true`` for the heat map.
"""

from vistrain.serve.lambda_handler import handler

__all__ = ["handler"]
