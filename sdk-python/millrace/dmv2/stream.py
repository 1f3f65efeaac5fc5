"""`moose_lib.dmv2.stream`: the names Millrace provides, re-exported. moose_lib names Millrace lacks raise NotProvidedError;
names added to the top-level `millrace` package later are forwarded (see `millrace._surface`)."""

from __future__ import annotations

from .._surface import module_getattr
from ..resources import ConsumerConfig, DeadLetterModel, DeadLetterQueue, Stream, StreamConfig, TransformConfig

__all__ = ["ConsumerConfig", "DeadLetterModel", "DeadLetterQueue", "Stream", "StreamConfig", "TransformConfig"]
__getattr__ = module_getattr(__name__)
