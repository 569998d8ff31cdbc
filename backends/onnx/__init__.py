"""The ONNX backend: a spec exported to ONNX with its weights and run by onnxruntime. It runs
inference only (predict, evaluate); train with another backend and load the weights here.

    model = ms.load_model("weights.safetensors", backend="onnx")   # model.native: the session
    modelspec predict SPEC --weights W --input X.npy --backend onnx

Pieces: `export` (the ONNX model of a spec and its weights, shared with `modelspec export`;
it needs onnx only), `engine` (onnxruntime sessions, and evaluate's loss from the numpy
backend's formulas), `backend` (the registry's entry, which imports onnxruntime).
"""
