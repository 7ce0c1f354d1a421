"""The neuron options' names, without torch: the config schema's choices and the neuron code's cases."""
NEURONS = ("leaky", "synaptic")  # snnTorch Leaky, Synaptic
RESETS = ("subtract", "zero", "none")  # snnTorch's reset_mechanism values
SURROGATES = ("fast_sigmoid", "atan", "sigmoid", "triangular", "straight_through")  # qsnn.core.surrogates
