"""Ddpm's first training steps re-run in PyTorch on Ddpm's own inputs, step by step.

A short ddpm-tool run that records every step (`train --save-spikes 1e-9`, the first 20 steps) leaves the starting
weights, batch, timesteps, noise and learning rate of each step. This script starts labml's UNet (unet_step.py
beside this file) from step 1's weights and takes every recorded step with PyTorch's loss, backward pass,
clip_grad_norm_ and Adam; after each step it compares its loss and gradient norm with Ddpm's and its weights with
the weights the next record (or the run's final checkpoint) starts from. A fault anywhere in Ddpm's step -- the
loss, a gradient, the clipping, Adam, the schedule -- shows at once as weights that part.

  ddpm-tool train --no-classes --steps 20 --warmup 5 --save-spikes 1e-9 --checkpoint-every 0 --out runs/lock
  OMP_NUM_THREADS=2 /usr/bin/python3 lockstep.py runs/lock
"""
import argparse, glob, json, os, sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_step import unet_from_config  # noqa: E402
from replay_step import read_safetensors  # noqa: E402
from train_recipe import alpha_bar  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('run', help='the run folder of a ddpm-tool run with --save-spikes (spikes/ and its checkpoint-NNNNNNN.safetensors)')
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    records = sorted(glob.glob(os.path.join(a.run, 'spikes', 'step-*.safetensors')))
    if not records:
        raise SystemExit(f'{a.run}: no recorded steps in spikes/ (train --save-spikes 1e-9 records every step)')
    steps = [int(os.path.basename(r)[5:12]) for r in records]
    if steps != list(range(1, len(steps) + 1)):
        raise SystemExit(f'{a.run}: the recorded steps are {steps[:5]}...; lockstep needs every step from step 1 (Adam starts from zero moments)')
    checkpoints = sorted(glob.glob(os.path.join(a.run, 'checkpoint-*.safetensors')))
    if not checkpoints:
        raise SystemExit(f'{a.run}: no checkpoint-NNNNNNN.safetensors')
    cmeta, ckpt = read_safetensors(checkpoints[-1])
    tc = json.loads(cmeta['training'])
    meta, ts = read_safetensors(records[0])
    mc, dc = json.loads(meta['model']), json.loads(meta['diffusion'])
    if mc.get('num_classes', 0) or mc.get('dropout', 0.0) > 0 or str(dc.get('loss_weighting', 'Uniform')).lower() != 'uniform':
        raise SystemExit(f'{a.run}: lockstep covers an unconditional model without dropout and with uniform loss weights')
    model = unet_from_config(dict(mc, dropout=0.0))
    model.load_state_dict({k[len('model.'):]: torch.from_numpy(v.copy()) for k, v in ts.items() if k.startswith('model.')}, strict=False)
    opt = torch.optim.Adam(model.parameters(), lr=tc['lr'], betas=(tc['beta1'], tc['beta2']), eps=tc['adam_eps'],
                           weight_decay=tc.get('weight_decay', 0.0))
    abar = torch.tensor(alpha_bar(dc), dtype=torch.float64)
    v_pred = str(dc.get('prediction', 'Eps')).lower() == 'v'
    names = [n for n, _ in model.named_parameters()]

    def rel(weights, ref):
        num = sum(float(np.sum((weights[n] - ref[n].astype(np.float64)) ** 2)) for n in names)
        return np.sqrt(num / sum(float(np.sum(ref[n].astype(np.float64) ** 2)) for n in names))

    worst_loss = 0.0
    print(f'{"step":>4}  {"loss (PyTorch)":>15} {"loss (Ddpm)":>12} {"|g| (PyTorch)":>14} {"|g| (Ddpm)":>11} {"lr":>9}  weights apart after the step (step size)')
    for k, path in enumerate(records):
        meta, ts = read_safetensors(path)
        start = {n: ts['model.' + n] for n in names}
        x0, noise = torch.from_numpy(ts['x0'].copy()), torch.from_numpy(ts['noise'].copy())
        t = torch.from_numpy(ts['t'].copy()).long()
        ab = abar[t]
        a_t = ab.sqrt().float()[:, None, None, None]
        s_t = (1 - ab).sqrt().float()[:, None, None, None]
        xt = a_t * x0 + s_t * noise
        target = a_t * noise - s_t * x0 if v_pred else noise
        loss = ((model(xt, t.float()) - target) ** 2).mean()
        for g in opt.param_groups:
            g['lr'] = float(meta['lr'])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc['grad_clip']) if tc['grad_clip'] > 0 else torch.tensor(0.0)
        opt.step()
        after = read_safetensors(records[k + 1])[1] if k + 1 < len(records) else {'model.' + n: ckpt['model.' + n] for n in names}
        ref = {n: after['model.' + n] for n in names}
        mine = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
        moved = rel({n: start[n].astype(np.float64) for n in names}, ref)
        worst_loss = max(worst_loss, abs(loss.item() - float(meta['loss'])) / abs(float(meta['loss'])))
        print(f'{meta["step"]:>4}  {loss.item():15.7f} {float(meta["loss"]):12.7f} {float(gnorm):14.5f} {float(meta["grad_norm"]):11.5f} '
              f'{float(meta["lr"]):9.2e}  {rel(mine, ref):.2e} ({moved:.2e})')
    print(f'largest relative loss difference over {len(records)} steps: {worst_loss:.1e}')


if __name__ == '__main__':
    main()
