"""Python-backend models, copied as `model.py` into the repositories `moe-compile deploy` writes.

They run inside Triton's python backend stub, where `triton_python_backend_utils` exists and
moe-compile may not be installed: each file stands alone (numpy, onnxruntime, the backend's
utilities) and nothing in moe_compile imports them. The server tests run them for real.
"""
