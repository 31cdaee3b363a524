"""The studio's words of the trade, each explained once in plain language: the help icons of the pages
and the glossary on the Layers page read them here, so a term means the same wherever it shows."""
from __future__ import annotations

GLOSSARY: dict[str, str] = {
    "probe": "A probe is the new output layer (the head) fitted on the frozen backbone's features: every image "
             "goes through the pretrained backbone once, and only the head learns. Fast, and hard to over-fit.",
    "multi-layer features": "Multi-layer features: the head reads the pooled outputs of every stage of the backbone, "
                            "not only the last one. Early stages see edges and textures, late ones whole objects; "
                            "the run keeps them only when they beat the last layer's features on validation loss.",
    "layer groups": "Layer groups (blocks.0, blocks.1, … blocks.N) are the backbone's stages, from the input "
                    "(blocks.0: edges, colours) to the output (the highest N: whole shapes). \"top-2\" lets the two "
                    "groups nearest the head learn, with the head; the others stay as pretrained.",
    "fine-tuning": "Fine-tuning: some of the backbone's own layers learn too (not only the head), at a small "
                   "learning rate. It can adapt the features to your images; it needs more images and time.",
    "time budget": "The Auto plan's time budget, as a multiple of feature extraction's time: with 5×, when "
                   "extracting features takes 10 s, the plan may spend about 50 s measuring fine-tuning candidates. "
                   "A candidate that would not fit is not measured, and the page says so.",
    "ECE": "ECE (expected calibration error): the average gap between how sure the model says it is and how often it "
           "is right. 0 % is perfect; under about 5 % the confidences can be read as probabilities.",
    "cross-validation": "k-fold cross-validation: the images are cut into k folds; each fold is scored by a head "
                        "fitted on the other folds, so every image is validated once and none is set aside. Used "
                        "instead of a hold-out when only the head learns on cached features.",
    "hold-out": "A hold-out: a share of each class's images is set aside before training and used only to score the "
                "model.",
    "validation loss": "Validation loss: how far the model's probabilities are from the right answers on validation "
                       "images (lower is better). It moves with every image's confidence, not only right/wrong, so "
                       "choices between close options are made on it.",
}


def explain(term: str) -> str:
    """The plain-language explanation of `term` (a GLOSSARY key; KeyError for a word not explained here)."""
    return GLOSSARY[term]


def glossary_markdown() -> str:
    """Every entry, one bullet each, for a glossary expander (the terms are ours: no user text inside)."""
    return "\n".join(f"- **{term}**: {text}" for term, text in GLOSSARY.items())
