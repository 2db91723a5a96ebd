"""`TutorDataModule`: any supported file → assistant-only-labelled, length-grouped batches.

Validation has two loaders: teacher-forced batches for loss/perplexity, and left-padded prompts of
the items with a numeric answer, which the model answers by generation for math accuracy. Each file
of `extra_math_files` adds one more prompt loader: a second held-out set that is only answered and
reported (under its own metric prefix), never used for the loss, early stopping or the best adapter.

Under data parallelism the module shards its own loaders (Lightning's distributed samplers are
switched off by the CLI): training batches are length-grouped globally and split between processes,
and each validation item is seen by exactly one process. Lightning's `DistributedSampler` would
repeat items to even out the shards and count them twice in the math accuracy.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from src.data.chat_format import IGNORE_INDEX, ChatFormatter
from src.data.collate import PromptCollator, TrainCollator, packing_collator
from src.data.conversation import Record, mark_task_records
from src.data.formats import load_records
from src.data.replay import REPLAY_KIND, mix_replay, replay_records
from src.data.retention import load_open
from src.data.grading import graded_records, grading_summary
from src.data.resumable import ResumableBatchSampler
from src.data.samplers import LengthGroupedBatchSampler
from src.data.splits import drop_overlap, split_records
from src.data.stats import dataset_statistics, flatten_for_logging, format_statistics
from src.errors import ConfigurationError
from src.sources.tokenizer import load_tokenizer
from src.sources.offline_default import OFFLINE_DEFAULT, cache_root

TOKENIZATION_VERSION = "3"  # bump when tokenisation changes, so stale caches are not reused


class TutorDataModule(L.LightningDataModule):
    """Tutor conversations from Q&A blocks, instruction pairs or chat JSONL.

    Args:
        train_file: training data (`.txt` Q&A blocks, `.json`/`.jsonl` instructions or chats).
        val_file: validation data; None splits `train_file` by `split_seed`.
        format: `auto` (by extension and keys), `qa_blocks`, `instruction` or `chat`.
        val_fraction: share of distinct training examples held out when there is no `val_file`.
        split_seed: seed of the split and of the math-evaluation subset.
        system_prompt: system text for conversations without one (replaces the template's default).
        task_system_prompt: a system turn for the task's own conversations only (training rows, held-out
            math questions, `answer`, `chat`), not for replay rows or the general-ability prompts: the adapter
            can learn that tutoring is what the turn asks for and leave unmarked talk as the base had it.
        chat_template: Jinja chat template overriding the tokenizer's (base models have none).
        max_length: examples longer than this many tokens are truncated (and counted).
        batch_size: training batch size.
        eval_batch_size: batch size for validation loss and for generation.
        order: `length_grouped` (little padding), `shuffle`, or `sequential` (file order, for curricula).
        packing: concatenate each training batch's examples into one row without padding
            (`position_ids` restart per example so attention stops at each boundary); a step still
            holds `batch_size` examples, so step counts and the lr schedule do not change.
            Validation batches stay padded.
        math_eval_size: how many numeric validation items to answer by generation (a fixed seeded
            subset); None for all of them, 0 to skip math evaluation.
        extra_math_files: further held-out sets answered by generation at each validation, as
            `{prefix: file}`; their accuracy is logged as `<prefix>/math_acc` (and per kind), next to
            `val/math_acc`. For an honest number on questions the recipe was not tuned on.
        grade_from_answers: grade rows without an `expected` value by the number their reference answer
            states unambiguously (a bare number, "Respuesta: N", "Answer: N", "#### N", "la respuesta
            es N", "the answer is N"); false grades only rows with `expected`.
        replay_ratio: replay rows per training row (0.1 adds one for every ten): the base model's own greedy
            replies to `replay_file`'s general prompts, generated once before training and cached, so the loss
            on them teaches the adapter to leave general behaviour alone. 0: no replay.
        replay_file: general prompts for replay, apart from the retention set's evaluation prompts.
        replay_self_prompts: how many further replay prompts the base model writes itself (it continues
            its own template's user turn from a question's first words; `src.evaluation.self_prompts`),
            for replay as varied as what the base model knows. 0: only `replay_file`'s prompts.
        loss_eval_size: how many validation examples the validation loss is computed on (a fixed
            seeded subset); None for all of them.
        num_workers: DataLoader workers.
        cache_dir: where tokenised datasets are cached (default: the tutor-tune cache folder).
        model_name: linked from `model.model_name`.
        gguf_file: linked from `model.gguf_file`.
        tokenizer_name: linked from `model.tokenizer_name`.
    """

    def __init__(
        self,
        train_file: str | None = "data/arithmetic/train.jsonl",
        val_file: str | None = None,
        format: str = "auto",
        val_fraction: float = 0.1,
        split_seed: int = 42,
        system_prompt: str | None = None,
        task_system_prompt: str | None = None,
        chat_template: str | None = None,
        max_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        order: Literal["length_grouped", "shuffle", "sequential"] = "length_grouped",
        packing: bool = False,
        math_eval_size: int | None = None,
        extra_math_files: dict[str, str] | None = None,
        grade_from_answers: bool = True,
        replay_ratio: float = 0.0,
        replay_file: str = "data/retention/replay_prompts.jsonl",
        replay_self_prompts: int = 0,
        loss_eval_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        model_name: str = OFFLINE_DEFAULT,
        gguf_file: str | None = None,
        tokenizer_name: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = None
        self.formatter: ChatFormatter | None = None
        self.train_dataset: datasets.Dataset | None = None
        self.val_dataset: datasets.Dataset | None = None
        self.math_items: list[dict[str, Any]] = []
        self.extra_math_items: dict[str, list[dict[str, Any]]] = {}
        self.statistics: dict[str, Any] = {}
        self._resume_position: dict[str, int] | None = None  # from a checkpoint, for the next training loader
        self._train_records: list[Record] = []
        self.replay_rows = 0
        _check_prefixes(extra_math_files or {})

    @property
    def math_kinds(self) -> list[str]:
        items = [*self.math_items, *(i for extra in self.extra_math_items.values() for i in extra)]
        return sorted({item["kind"] for item in items if item["kind"]})

    @property
    def math_set_names(self) -> list[str]:
        """Metric prefix of each prompt loader, in `val_dataloader` order after the loss loader."""
        if self.hparams.math_eval_size == 0:
            return []
        return (["val"] if self.math_items else []) + [name for name, items in self.extra_math_items.items() if items]

    @property
    def longest_reference_answer(self) -> dict[str, Any] | None:
        """The graded item whose reference answer takes the most tokens (with its end of turn), and its
        file: a generation budget below that cuts such replies before their final answer."""
        named = [("val", self.math_items), *self.extra_math_items.items()]
        candidates = [(item, name) for name, items in named for item in items]
        if not candidates:
            return None
        item, name = max(candidates, key=lambda pair: pair[0]["answer_tokens"])
        return {"tokens": item["answer_tokens"], "question": item["question"], "source": self._math_source(name), "set": name}

    def _math_source(self, name: str) -> str:
        """The file (or split) a held-out set's questions come from, as messages name it."""
        hp = self.hparams
        if name != "val":
            return str(hp.extra_math_files[name])
        return str(hp.val_file or f"the validation split of {hp.train_file}")

    def prepare_data(self) -> None:
        # Lightning calls this once per machine before any process's `setup`: the first run's
        # conversion of the offline default is done once, not raced by every process.
        load_tokenizer(self.hparams.model_name, self.hparams.gguf_file, self.hparams.tokenizer_name)

    def setup(self, stage: str) -> None:
        if self.formatter is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name, hp.gguf_file, hp.tokenizer_name)
        self.formatter = ChatFormatter(self.tokenizer, hp.system_prompt, hp.chat_template)
        train_records, val_records = (
            mark_task_records(records, hp.task_system_prompt) for records in self._read_splits(stage)
        )
        self._train_records = train_records
        train = self._tokenize(train_records, "train") if train_records else None
        val = self._tokenize(val_records, "val")
        # Statistics describe the data as given, before answerless truncated examples are skipped.
        self._report_statistics(train_records or val_records, train if train is not None else val)
        self.train_dataset = self._without_answerless(train, "train") if train is not None else None
        self.val_dataset = self._seeded_subset(self._without_answerless(val, "val"), self.hparams.loss_eval_size)
        self.math_items = self._math_items(val_records, self._math_source("val"))
        self.extra_math_items = {
            name: self._math_items(mark_task_records(load_records(path, hp.format), hp.task_system_prompt),
                                   self._math_source(name))
            for name, path in (hp.extra_math_files or {}).items()
        }

    @property
    def replay_prompts(self) -> list[str]:
        """The prompts whose base-model replies `add_replay` expects; empty without replay."""
        if self.hparams.replay_ratio == 0:
            return []
        return [item["prompt"] for item in load_open(self.hparams.replay_file)]

    @property
    def replay_self_prompts(self) -> int:
        """How many replay prompts the base model is to write itself; 0 without replay."""
        return self.hparams.replay_self_prompts if self.hparams.replay_ratio else 0

    def add_replay(self, prompts: list[str], replies: list[str]) -> None:
        """Mix the base model's `replies` to `prompts` (`replay_prompts` and any it wrote itself) into the
        training set, seeded by `split_seed`.

        Called by the module once the model exists, before the first training loader is made."""
        replay = replay_records(prompts, replies)
        mixed = mix_replay(self._train_records, replay, self.hparams.replay_ratio, self.hparams.split_seed)
        self.replay_rows = len(mixed) - len(self._train_records)
        self.train_dataset = self._without_answerless(self._tokenize(mixed, "train"), "train")
        rank_zero_info(f"Replay: {self.replay_rows} rows of the base model's own replies to "
                       f"{len(replay)} general prompts mixed into {len(self._train_records)} training rows.")

    def _read_splits(self, stage: str) -> tuple[list[Record], list[Record]]:
        hp = self.hparams
        if stage != "fit" and hp.val_file:
            return [], load_records(hp.val_file, hp.format)
        if not hp.train_file:
            raise ConfigurationError("data.train_file is required to fit (data.val_file alone is enough to validate)")
        train = load_records(hp.train_file, hp.format)
        if hp.val_file is None:
            train, val = split_records(train, hp.val_fraction, hp.split_seed)
        else:
            val = load_records(hp.val_file, hp.format)
            train, dropped = drop_overlap(train, val)
            if dropped:
                rank_zero_info(f"Dropped {dropped} training examples that also appear in {hp.val_file}.")
        return (train if stage == "fit" else []), val

    def _tokenize(self, records: list[Record], split: str) -> datasets.Dataset:
        formatter, max_length = self.formatter, self.hparams.max_length

        def tokenize(row: dict[str, Any]) -> dict[str, Any]:
            example = formatter.tokenize(row["messages"], max_length)
            return {
                "input_ids": example.input_ids,
                "labels": example.labels,
                "truncated": example.truncated,
                "length": len(example.input_ids),
                "full_length": example.full_length,
                "label_tokens": sum(label != IGNORE_INDEX for label in example.labels),
            }

        fingerprint = self._fingerprint(records)
        cache_dir = Path(self.hparams.cache_dir or cache_root() / "datasets")
        cache_dir.mkdir(parents=True, exist_ok=True)
        raw = datasets.Dataset.from_list([{"messages": r["messages"], "replay": r["kind"] == REPLAY_KIND} for r in records])
        # Explicit fingerprint: hashing the tokenizer closure is slow and not always stable.
        tokenized = raw.map(
            tokenize,
            remove_columns=["messages"],
            cache_file_name=str(cache_dir / f"{split}-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            desc=f"Tokenising {split}",
        )
        return tokenized

    def _without_answerless(self, tokenized: datasets.Dataset, split: str) -> datasets.Dataset:
        lost = sum(count == 0 for count in tokenized["label_tokens"])
        if lost:
            rank_zero_info(
                f"{lost} {split} examples have no answer tokens left after truncation to "
                f"data.max_length={self.hparams.max_length} and are skipped; raise data.max_length to keep them."
            )
            tokenized = tokenized.filter(lambda row: row["label_tokens"] > 0)
        return tokenized

    def _seeded_subset(self, dataset: datasets.Dataset, size: int | None) -> datasets.Dataset:
        if size is None or size >= len(dataset):
            return dataset
        return dataset.select(sorted(random.Random(self.hparams.split_seed).sample(range(len(dataset)), size)))

    def _fingerprint(self, records: list[Record]) -> str:
        hp = self.hparams
        digest = hashlib.sha256()
        for part in (
            TOKENIZATION_VERSION,
            self.tokenizer.name_or_path,
            str(len(self.tokenizer)),
            self.formatter.chat_template,
            str(hp.system_prompt),
            str(hp.max_length),
            repr([r["messages"] for r in records]),
        ):
            digest.update(part.encode("utf-8"))
        return digest.hexdigest()[:24]

    def _math_items(self, records: list[Record], source: str) -> list[dict[str, Any]]:
        """Validation items with a numeric answer, as prompts ending before their final answer."""
        size = self.hparams.math_eval_size
        hp = self.hparams
        found = graded_records(records, hp.grade_from_answers)
        graded = found.records
        if size is not None and size < len(graded):
            chosen = sorted(random.Random(self.hparams.split_seed).sample(range(len(graded)), size))
            graded = [graded[i] for i in chosen]
        items = []
        for record in graded:
            last_answer = max(i for i, m in enumerate(record["messages"]) if m["role"] == "assistant")
            prompt = record["messages"][:last_answer]
            prompt_text = self.formatter.prompt_text(prompt)
            answer = record["messages"][last_answer]["content"]
            items.append(
                {
                    "prompt_ids": self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"],
                    "question": prompt[-1]["content"],
                    "expected": record["expected"],
                    "kind": record["kind"],
                    # The reference answer's length, plus the end-of-turn token that stops generation.
                    "answer_tokens": len(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1,
                }
            )
        rank_zero_info(grading_summary(found, len(items), source, hp.grade_from_answers, size))
        return items

    def _report_statistics(self, records: list[Record], tokenized: datasets.Dataset) -> None:
        self.statistics = dataset_statistics(
            records,
            token_lengths=tokenized["full_length"],
            label_token_counts=tokenized["label_tokens"],
            truncated=sum(tokenized["truncated"]),
            max_length=self.hparams.max_length,
        )
        rank_zero_info(format_statistics(self.statistics))
        logger = self.trainer.logger if self.trainer is not None else None
        if logger is not None:
            logger.log_metrics(flatten_for_logging(self.statistics), step=0)

    def _replicas(self) -> tuple[int, int]:
        """(number of data-parallel processes, this process's rank); (1, 0) outside a trainer."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return 1, 0
        if trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigurationError(
                "TutorDataModule shards its own loaders across processes; set trainer.use_distributed_sampler=false "
                "(the CLI's default) so Lightning does not shard them a second time."
            )
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        inputs = self._model_inputs(self.train_dataset, packed=hp.packing)
        collate = packing_collator() if hp.packing else TrainCollator(self.tokenizer.pad_token_id)
        replicas, rank = self._replicas()
        if hp.order == "length_grouped":
            batches = LengthGroupedBatchSampler(
                self.train_dataset["length"], hp.batch_size, seed=hp.split_seed, num_replicas=replicas, rank=rank
            )
        elif replicas > 1:
            raise ConfigurationError(
                f"data.order={hp.order!r} runs in one process only; use data.order=length_grouped with several devices."
            )
        else:
            # Seeded by `split_seed` + epoch (set_epoch), so a resumed run replays the same order.
            order = (
                DistributedSampler(inputs, num_replicas=1, rank=0, shuffle=True, seed=hp.split_seed)
                if hp.order == "shuffle"
                else SequentialSampler(inputs)
            )
            batches = BatchSampler(order, hp.batch_size, drop_last=False)
        resumable = ResumableBatchSampler(batches)
        if self._resume_position is not None:
            resumable.resume(**self._resume_position)
            self._resume_position = None
        return DataLoader(inputs, batch_sampler=resumable, collate_fn=collate, num_workers=hp.num_workers)

    # ----------------------------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where training is in the epoch's seeded batch order."""
        trainer = self.trainer
        if trainer is None:
            return {}
        # Batches consumed by training, not fetched: Lightning fetches one batch ahead.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"train_position": {"epoch": trainer.current_epoch, "batches_done": done}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored before the training loader is built, which then starts at the next batch.
        self._resume_position = state_dict.get("train_position")

    def val_dataloader(self) -> list[DataLoader]:
        """Loss batches, then the generation prompts of each held-out set (`math_set_names`)."""
        return [self.loss_dataloader(), *(self.math_dataloader(name) for name in self.math_set_names)]

    def loss_dataloader(self) -> DataLoader:
        """Teacher-forced validation batches for loss and perplexity."""
        hp = self.hparams
        replicas, rank = self._replicas()
        val = self._model_inputs(self.val_dataset)
        return DataLoader(
            val.select(range(rank, len(val), replicas)) if replicas > 1 else val,
            batch_size=hp.eval_batch_size,
            # Padded even with packing: sdpa/eager attend over a whole packed row, masked, so eval batches
            # of 50 examples would cost (50 T)² attention scores instead of 50 T².
            collate_fn=TrainCollator(self.tokenizer.pad_token_id),
            num_workers=hp.num_workers,
        )

    def math_dataloader(self, name: str = "val") -> DataLoader:
        """Generation prompts of the validation set (`val`) or of the extra held-out set `name`."""
        # Longest prompts first: similar lengths share a batch, and memory peaks show up at once.
        source = self.math_items if name == "val" else self.extra_math_items[name]
        items = sorted(source, key=lambda item: -len(item["prompt_ids"]))
        replicas, rank = self._replicas()
        items = items[rank::replicas]
        return DataLoader(
            items,
            batch_size=self.hparams.eval_batch_size,
            collate_fn=PromptCollator(self.tokenizer.pad_token_id),
            num_workers=self.hparams.num_workers,
        )

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.math_dataloader()

    @staticmethod
    def _model_inputs(dataset: datasets.Dataset, packed: bool = False) -> datasets.Dataset:
        # Padded batches carry which rows are replay (for `model.replay_kl`); packed rows have no row to mark.
        return dataset.select_columns(["input_ids", "labels"] + ([] if packed else ["replay"]))


RESERVED_PREFIXES = ("val", "base", "train", "data", "memory")


def _check_prefixes(files: dict[str, str]) -> None:
    for name in files:
        if name in RESERVED_PREFIXES or not name.isidentifier():
            raise ConfigurationError(
                f"data.extra_math_files: {name!r} cannot name a held-out set; use a short identifier other than "
                f"{', '.join(RESERVED_PREFIXES)} (its metrics are logged as '<name>/math_acc')."
            )
