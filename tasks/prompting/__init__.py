"""Prompt-based learning on T5: the pattern-verbalizer core (templates, verbalizers, rank classification,
demonstrations, prompted seqio tasks) in `core`, and the few-shot systems built on it, one module per method.
"""
from tasks.prompting.core import (PromptedDataset, Template, Verbalizer, add_demonstrations, in_memory_source,
                                  label_token_ids, prepend_task_index, prompted_examples, rank_classification_examples,
                                  rank_classification_metric, rank_classification_postprocessor, rank_classify,
                                  rank_predictions, register_multi_template_mixture, register_prompted_task,
                                  register_rank_classification_task, sample_demonstrations, text_token_ids)

__all__ = ["PromptedDataset", "Template", "Verbalizer", "add_demonstrations", "in_memory_source", "label_token_ids",
           "prepend_task_index", "prompted_examples", "rank_classification_examples", "rank_classification_metric",
           "rank_classification_postprocessor", "rank_classify", "rank_predictions", "register_multi_template_mixture",
           "register_prompted_task", "register_rank_classification_task", "sample_demonstrations", "text_token_ids"]
