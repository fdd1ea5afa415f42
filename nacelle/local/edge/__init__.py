"""The simulated edge: the MQTT broker (mosquitto) and its PKI, the Greengrass nucleus of each core device and the
recipes it applies, the fleet that supervises the devices, and the per-device component users.
"""
