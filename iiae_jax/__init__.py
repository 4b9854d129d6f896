"""iiae_jax: the Interaction Information Auto-Encoder (Hwang et al., NeurIPS 2020) in JAX/Flax."""
from iiae_jax import distributions
from iiae_jax.distributions import Gaussian
from iiae_jax.inference import decode, exclusive_embedding, shared_embedding, translate
from iiae_jax.models import IIAE, build_model
from iiae_jax.objective import TERMS, kl_annealing, loss

__version__ = "0.1.0"

__all__ = [
    "IIAE", "Gaussian", "TERMS", "build_model", "decode", "distributions",
    "exclusive_embedding", "kl_annealing", "loss", "shared_embedding", "translate",
]
