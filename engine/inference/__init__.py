"""Model-mode inference: the runtime the pipeline calls (``runtime.CalciumModels``), TensorRT engine
building and caching (``engines``), the weights folder as serving reads it (``weights_spec``) and the
machine description recorded with every measurement (``device_info``).

Submodules import their heavy dependencies themselves; importing this package is free.
"""
