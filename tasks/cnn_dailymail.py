"""CNN/DailyMail summarisation as T5's `cnn_dailymail_v002`: 'summarize: {article}' -> highlights, ROUGE."""
import seqio
import tensorflow as tf

from tasks import metrics, vocab

# T5 used 3.1.0; TFDS 4.9 can only build 3.4.0 (same articles, cleaner highlight spacing, extra id field).
TFDS_NAME = "cnn_dailymail:3.4.0"
TASK_NAME = "cnn_dailymail_v002"


@seqio.map_over_dataset
def summarize(x, article_key: str = "article", summary_key: str = "highlights"):
    """T5's summarisation format: inputs 'summarize: ' + article, targets the summary."""
    return {
        "inputs": tf.strings.join(["summarize:", x[article_key]], separator=" "),
        "targets": x[summary_key],
    }


cnn_dailymail_v002 = seqio.TaskRegistry.add(
    TASK_NAME,
    source=seqio.TfdsDataSource(tfds_name=TFDS_NAME),
    preprocessors=[
        summarize,
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=vocab.output_features(),
    metric_fns=[metrics.rouge],
)
