"""edgecam device runtime: camera -> preprocess -> TFLite -> postprocess -> MQTT.

Importing this package must stay cheap: no TensorFlow, no OpenCV, no paho at import time.
"""

__version__ = "0.1.0"
