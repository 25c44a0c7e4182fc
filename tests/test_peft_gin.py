"""gin_configs/peft/*.gin select their method on top of a model and run file; a LoRA run trains only LoRA."""
import flax
import gin
import jax
import numpy as np
import pytest

from tasks_fixtures import spm_model  # noqa: F401
from text2text import config, launch, optim, peft
from text2text.convert import save_hf_checkpoint
from text2text.models import EncoderDecoderModel
from text2text.peft import trainable

LEARNING_RATES = {'prompt_tuning': 0.3, 'p_tuning': 1e-2, 'prefix_tuning': 1e-2, 'adapters': 1e-3, 'lora': 1e-3, 'bitfit': 1e-3,
                  'linear_probe': 1e-2}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


REQUIRED = ['MIXTURE_OR_TASK_NAME = "demo_word_polarity"', 'TASK_FEATURE_LENGTHS = {"inputs": 32, "targets": 4}',
            'TRAIN_STEPS = 1', 'MODEL_DIR = "/nonexistent"']


def _load(method: str, *bindings: str) -> None:
    """Parses tiny model + finetune run + the method's gin file; later bindings override earlier ones."""
    files = ['models/tiny.gin', 'runs/finetune.gin', f'peft/{method}.gin']
    label_words = ['LABEL_WORDS = ["even", "odd"]'] if method == 'linear_probe' else []  # a macro only it uses
    launch.load_gin(launch.Flags(gin_files=files, gin_bindings=['config.get_config.vocab_size = 512', *REQUIRED,
                                                                *label_words, *bindings]))


@pytest.mark.parametrize('method', peft.METHODS)
def test_gin_file_selects_its_method_and_optimizer(method, spm_model):
    _load(method)
    cfg = gin.get_configurable(config.get_config)()
    assert cfg.peft.methods() == (method,) and cfg.vocab_size == 512
    assert float(gin.get_configurable(optim.constant_schedule)()(0)) == pytest.approx(LEARNING_RATES[method])
    if method != 'prefix_tuning':  # zero-, tiny- or embedding-initialised params: steps of ~LR, not LR x RMS
        assert gin.query_parameter('optim.adafactor.multiply_by_parameter_scale') is False
    tx = gin.get_configurable(trainable.peft_optimizer)()
    params = {'encoder': {'layers_0': {'attention': {'query': {'kernel': np.ones((4, 4), np.float32)}}}},
              'probe': {'kernel': np.ones((4, 2), np.float32)}}
    if method == 'linear_probe':  # the probe trains; a base kernel gets zero updates
        updates, _ = tx.update(params, tx.init(params), params)
        assert float(np.abs(updates['probe']['kernel']).sum()) > 0
        assert float(np.abs(updates['encoder']['layers_0']['attention']['query']['kernel']).sum()) == 0


def test_lora_run_from_an_hf_base_changes_only_lora_params(spm_model, tmp_path):
    base_config = config.get_config('tiny', vocab_size=512)
    shapes = {'inputs': (1, 8), 'targets': (1, 4)}
    variables = EncoderDecoderModel(base_config).init_variables(jax.random.PRNGKey(0), shapes)
    base = flax.core.meta.unbox(variables)['params']
    save_hf_checkpoint(base_config, base, str(tmp_path / 'base'))
    _load('lora', 'MIXTURE_OR_TASK_NAME = "demo_word_polarity"', 'TASK_FEATURE_LENGTHS = {"inputs": 32, "targets": 4}',
          'TRAIN_STEPS = 2', f'MODEL_DIR = "{tmp_path / "run"}"', 'BATCH_SIZE = 4', 'EVAL_PERIOD = 0',
          f'INITIAL_CHECKPOINT_PATH = "{tmp_path / "base"}"', 'LEARNING_RATE = 0.01')
    result = gin.get_configurable(launch.run)()
    assert result['step'] == 2
    trained = flax.traverse_util.flatten_dict(jax.device_get(result['state'].params), sep='/')
    base_flat = flax.traverse_util.flatten_dict(base, sep='/')
    lora = sorted(k for k in trained if k not in base_flat)
    assert lora and all(k.endswith(('/lora_a', '/lora_b')) for k in lora)
    assert all(np.array_equal(trained[k], base_flat[k]) for k in base_flat)
    assert any(np.abs(trained[k]).sum() > 0 for k in lora if k.endswith('lora_b'))  # B moved off its zero init
    model = gin.get_configurable(EncoderDecoderModel)()
    names = peft.save_peft_from_checkpoint(str(tmp_path / 'run'), model, str(tmp_path / 'lora.safetensors'))
    assert names == lora
    saved, _ = peft.read_peft_file(str(tmp_path / 'lora.safetensors'))
    assert all(np.array_equal(saved[k], trained[k]) for k in lora)
