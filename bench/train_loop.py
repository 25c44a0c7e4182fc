"""Host overhead of the training loop: trainer.train's time outside the jitted step (data, dispatch, logging,
checkpoints) as a share of the loop, on the demo's fine-tuning shape.

The README demo's model (3+3 layers, d_model 128, mlp 512, vocabulary 2176), batch 32, inputs 32 / targets 16,
dense packing, log every 50 steps (as the demo), one checkpoint at the end, on bench/packing.py's GLUE-like
mixture (byte vocabulary, repeated). trainer.train reports seconds per loop phase (reporting.HostTimer); the data
of step N+1 is read while the device runs step N, so the share is an upper bound on what the host costs. Run:
`.venv/bin/python bench/train_loop.py [--threads N] [--steps S]`.
"""
import tempfile

from common import configure, load_note, parse_args
from packing import MIXTURE, _register


def main() -> None:
    args = parse_args(steps=300)
    configure(args.threads)
    from text2text import config, models, optim, trainer
    _register(200)
    model = models.EncoderDecoderModel(config.get_config(
        'tiny', vocab_size=2176, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_encoder_layers=3,
        num_decoder_layers=3))
    with tempfile.TemporaryDirectory() as model_dir:
        result = trainer.train(model_dir, model, MIXTURE, {'inputs': 32, 'targets': 16}, train_steps=args.steps,
                               batch_size=32, log_period=50, checkpoint_period=args.steps,
                               optimizer=optim.adafactor(learning_rate=optim.constant_schedule(1e-2)))
    host = result['host_time']
    per_step = {name: f'{1e3 * seconds / host["steps"]:.2f}' for name, seconds in host['seconds'].items()}
    print(f"# {load_note()}, threads {args.threads}; {host['steps']} steps timed (all but the first, which compiles)")
    print(f'# ms per step by phase: {per_step}')
    print(f'train_loop: {1e3 * host["loop_seconds"] / host["steps"]:.1f} ms per step, host overhead '
          f'{100 * host["overhead_fraction"]:.1f}% of the loop (phases {", ".join(trainer.HOST_OVERHEAD_PHASES)})')


if __name__ == '__main__':
    main()
