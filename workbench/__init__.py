"""RegNet fine-tuning workbench for TensorFlow 2 / Keras 3."""
from workbench.data import DatasetUnavailableError, ImageData, cache_root, load_folder, load_tfds
from workbench.design import VARIANTS, RegNetConfig, complexity, resolve_variant
from workbench.export import export, export_all
from workbench.finetune import FinetuneResult, finetune
from workbench.hub import HubBackbone, HubModelUnavailableError, hub_backbone, hub_classifier
from workbench.lr_find import LRFindResult, lr_find, suggest_lr
from workbench.model import STAGES, regnet, stage_layers
from workbench.optim import DiscriminativeOptimizer
from workbench.plots_data import plot_class_distribution, show_batch
from workbench.reports import (confusion_matrix, per_class_metrics, plot_confusion_matrix,
                               plot_lr_schedule, plot_top_losses, plot_training_curves,
                               predict_dataset, write_report)
from workbench.sample import sample_dataset
from workbench.schedules import OneCycle, WarmupCosine
from workbench.unfreeze import GradualUnfreezing, parse_schedule

__all__ = [
    "VARIANTS", "STAGES", "RegNetConfig", "complexity", "regnet", "resolve_variant", "stage_layers",
    "DatasetUnavailableError", "ImageData", "cache_root", "load_folder", "load_tfds",
    "sample_dataset", "show_batch", "plot_class_distribution",
    "GradualUnfreezing", "parse_schedule", "DiscriminativeOptimizer", "finetune", "FinetuneResult",
    "WarmupCosine", "OneCycle", "lr_find", "LRFindResult", "suggest_lr",
    "export", "export_all", "HubBackbone", "HubModelUnavailableError", "hub_backbone",
    "hub_classifier",
    "confusion_matrix", "per_class_metrics", "plot_confusion_matrix", "plot_lr_schedule",
    "plot_top_losses", "plot_training_curves", "predict_dataset", "write_report",
]
