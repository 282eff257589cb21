"""freqprobe first-party plugin: COCO detection mAP on low- and high-frequency images (paper §7)."""
