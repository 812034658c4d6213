"""Files other tools read and write: Keras 3 ``.keras`` / ``.weights.h5`` (``keras_format``) and ONNX
(``onnx_export``). Each needs the ``interop`` extra's packages, imported only when used."""
