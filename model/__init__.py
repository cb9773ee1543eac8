"""The GLM model on `mpu`: config and presets, the model with named taps, task heads."""
from .config import PRESETS, GLMConfig, preset
from .glm import GLMModel, ModelOutput, glm_config_of, glm_model_of
from .hf import HFTapModel, TapConfig, tap_config_of, tap_model_of
from .heads import GLMForMultiTokenCloze, GLMForSequenceClassification, GLMForSingleTokenCloze
from .taps import LAYER_TAPS, Taps
from .transformer import build_attention_mask

__all__ = ["PRESETS", "GLMConfig", "preset", "GLMModel", "ModelOutput", "glm_config_of", "glm_model_of",
           "HFTapModel", "TapConfig", "tap_config_of", "tap_model_of", "GLMForMultiTokenCloze", "GLMForSequenceClassification", "GLMForSingleTokenCloze", "LAYER_TAPS", "Taps",
           "build_attention_mask"]
