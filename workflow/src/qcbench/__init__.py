"""qcbench: quantization-conditioned backdoors, their attacks and defenses, as a library.

Registries (timm-style): ``qcbench.data.DATASETS``, ``qcbench.models.MODELS``,
``qcbench.quant.SCHEMES``, ``qcbench.triggers.TRIGGERS``, ``qcbench.attacks.ATTACKS``,
``qcbench.defenses.DEFENSES``; each has ``register_*`` and ``create_*`` helpers.
"""

__version__ = "0.1.0"
