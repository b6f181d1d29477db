"""edgecam conversion: TFLite variants, int8 calibration, Edge TPU compile, verification gate.

Importing this package is cheap; TensorFlow is imported only by the modules that convert
(``conversion.network``, ``conversion.converter``), when a conversion runs.
"""
