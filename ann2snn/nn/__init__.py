"""What a spiking network is made of: quantized ANN activations, spiking neurons, spiking
pools and the `SpikingNetwork` container.

This wing imports nothing from the rest of the package except the argument checks, so
everything above it (conversion, simulation, deploy, training) can build on it.
"""

from .activations import (
    QCFS,
    ClipQuant,
    NoisyQCFS,
    SpikeSpec,
    create_activation,
    is_quantized_activation,
    list_activations,
    register_activation,
)
from .network import SpikingNetwork, biases_off
from .neurons import (
    ConsistentIF,
    GroupNeuron,
    IFNeuron,
    SpikingNeuron,
    create_neuron,
    list_neurons,
    neuron_class,
    neurons,
    register_neuron,
)
from .pooling import LIPool
from .state import Stateful, is_stateful_module, reset

__all__ = [
    "QCFS",
    "NoisyQCFS",
    "ClipQuant",
    "SpikeSpec",
    "create_activation",
    "list_activations",
    "register_activation",
    "is_quantized_activation",
    "SpikingNeuron",
    "IFNeuron",
    "GroupNeuron",
    "ConsistentIF",
    "create_neuron",
    "list_neurons",
    "register_neuron",
    "neuron_class",
    "neurons",
    "reset",
    "Stateful",
    "is_stateful_module",
    "LIPool",
    "SpikingNetwork",
    "biases_off",
]
