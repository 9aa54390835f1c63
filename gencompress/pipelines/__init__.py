"""The command flows (quantize, export, analyze, prune, distill), one module each, over a shared
session (``session``), artifact building (``build``) and one grader (``grading``)."""
