"""A training step recorded by ddpm-tool (train --save-spikes), computed again in PyTorch.

The file holds the weights the step started from (labml's names), its batch (x0, timesteps, noise) and the loss
and gradient (before clipping) Ddpm computed. This script rebuilds labml's UNet (unet_step.py beside this file)
with those weights, forms the same noised images and target (eps or v, uniform or Min-SNR weights, from the
file's diffusion config), and compares PyTorch's loss and gradient with the recorded ones: overall, per tensor
(the worst), and the tensors that carry most of the gradient norm. --double computes in float64, a reference
for how much of a difference float32 rounding explains. --samples keeps some of the batch (the loss is then
their mean); --write OUT saves the step as PyTorch computed it (its loss and gradient in place of Ddpm's), a
record that `ddpm-tool parity --replay OUT` compares both Ddpm backends against.

  OMP_NUM_THREADS=2 /usr/bin/python3 replay_step.py runs/x/spikes/step-0000586.safetensors [--double]
  /usr/bin/python3 replay_step.py STEP --double --samples 25 --write torch64.safetensors
  ddpm-tool parity --replay torch64.safetensors
"""
import argparse, json, os, struct, sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_step import unet_from_config  # noqa: E402
from train_recipe import alpha_bar  # noqa: E402

DTYPES = {'F32': np.float32, 'F64': np.float64, 'I64': np.int64, 'I32': np.int32}


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop('__metadata__', {})
    tensors = {}
    for name, h in header.items():
        if h['dtype'] not in DTYPES:
            raise SystemExit(f'{path}: tensor {name} has dtype {h["dtype"]}, not one a recorded step uses')
        b, e = h['data_offsets']
        tensors[name] = np.frombuffer(data[b:e], dtype=DTYPES[h['dtype']]).reshape(h['shape'])
    return meta, tensors


def write_record(path, meta, tensors):
    header, offset, blobs = {'__metadata__': meta}, 0, []
    for name, v in tensors.items():
        b = np.ascontiguousarray(v).tobytes()
        header[name] = {'dtype': 'I64' if v.dtype == np.int64 else 'F32', 'shape': list(v.shape), 'data_offsets': [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rel(a, b):
    den = float(np.sqrt(np.sum(b.astype(np.float64) ** 2)))
    num = float(np.sqrt(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2)))
    return num / den if den > 0 else num


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('record', help='a recorded step (ddpm-tool train --save-spikes N writes OUT/spikes/step-*.safetensors)')
    ap.add_argument('--double', action='store_true', help='compute in float64')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--top', type=int, default=8, help='tensors listed by gradient norm')
    ap.add_argument('--samples', help='comma-separated batch indices to keep (default: the whole batch)')
    ap.add_argument('--write', help='save the step with PyTorch\'s loss and gradient as a record for ddpm-tool parity --replay')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    meta, ts = read_safetensors(a.record)
    if meta.get('format') != 'ddpm-step/1':
        raise SystemExit(f'{a.record}: header key "format" is not "ddpm-step/1"; not a recorded training step')
    mc, dc = json.loads(meta['model']), json.loads(meta['diffusion'])
    if mc.get('num_classes', 0):
        raise SystemExit(f'{a.record}: a class-conditional model; unet_step.py is labml\'s unconditional UNet')
    if mc.get('dropout', 0.0) > 0:
        raise SystemExit(f'{a.record}: dropout {mc["dropout"]}: PyTorch would draw other masks than the recorded step')
    keep = None
    if a.samples:
        keep = [int(i) for i in a.samples.split(',')]
        n = ts['x0'].shape[0]
        if any(i < 0 or i >= n for i in keep):
            raise SystemExit(f'--samples {a.samples}: the batch has samples 0 .. {n - 1}')
        for k in ('x0', 'noise', 't', 'labels'):
            if k in ts:
                ts[k] = ts[k][keep]
    dtype = torch.float64 if a.double else torch.float32
    model = unet_from_config(dict(mc, dropout=0.0))
    state = {k[len('model.'):]: torch.from_numpy(v.copy()) for k, v in ts.items() if k.startswith('model.')}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f'{a.record}: weights do not fit labml\'s UNet: missing {missing[:5]}, unexpected {unexpected[:5]}')
    model = model.to(dtype)
    model.train()

    x0 = torch.from_numpy(ts['x0'].copy()).to(dtype)
    noise = torch.from_numpy(ts['noise'].copy()).to(dtype)
    t = torch.from_numpy(ts['t'].copy()).long()
    ab = torch.tensor(alpha_bar(dc), dtype=torch.float64)[t]
    # Ddpm rounds the per-sample coefficients to float32 (as labml's gather from float32 tables does).
    a_t = ab.sqrt().to(torch.float32).to(dtype)[:, None, None, None]
    s_t = (1 - ab).sqrt().to(torch.float32).to(dtype)[:, None, None, None]
    xt = a_t * x0 + s_t * noise
    v_pred = str(dc.get('prediction', 'Eps')).lower() == 'v'
    target = a_t * noise - s_t * x0 if v_pred else noise
    err = ((model(xt, t.to(dtype)) - target) ** 2).flatten(1).mean(1)
    if str(dc.get('loss_weighting', 'Uniform')).lower().replace('_', '').replace('-', '') == 'minsnr':
        gamma = float(dc.get('min_snr_gamma', 5.0))
        snr = ab / (1 - ab)
        w = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1 if v_pred else snr)
        err = err * w.to(dtype)
    loss = err.mean()
    model.zero_grad(set_to_none=True)
    loss.backward()

    names = [k[len('grad.'):] for k in ts if k.startswith('grad.')]
    params = dict(model.named_parameters())
    mine = {n: params[n].grad.detach().double().numpy() if params[n].grad is not None else np.zeros(params[n].shape) for n in names}
    theirs = {n: ts['grad.' + n].astype(np.float64) for n in names}
    flat_mine = np.concatenate([mine[n].ravel() for n in names])
    flat_rec = np.concatenate([theirs[n].ravel() for n in names])
    if a.write:
        out = {k: v for k, v in ts.items() if not k.startswith('grad.')}
        for n in names:
            out['grad.' + n] = mine[n].astype(np.float32)
        for k in ('x0', 'noise'):
            out[k] = out[k].astype(np.float32)
        m2 = dict(meta, loss=repr(float(loss.item())), grad_norm=repr(float(np.sqrt(np.sum(flat_mine ** 2)))))
        write_record(a.write, m2, out)
        print(f'wrote {a.write} (PyTorch\'s loss and gradient of {x0.shape[0]} sample(s))')
    if keep is not None:
        flat_rec = flat_mine  # the recorded gradient is of the whole batch: nothing to compare
    print(f'{a.record}: step {meta["step"]}, batch {x0.shape[0]}, PyTorch {torch.__version__} in {"float64" if a.double else "float32"}')
    print(f'  loss      recorded {float(meta["loss"]):.7g}  PyTorch {loss.item():.7g}  rel diff {abs(loss.item() - float(meta["loss"])) / abs(loss.item()):.2e}')
    print(f'  grad norm recorded {float(meta["grad_norm"]):.7g}  PyTorch {np.sqrt(np.sum(flat_mine ** 2)):.7g}')
    print(f'  gradient rel L2 (PyTorch vs recorded): {rel(flat_rec, flat_mine):.2e}')
    scale = np.sqrt(np.sum(flat_mine ** 2))
    worst = max(names, key=lambda n: np.sqrt(np.sum((theirs[n] - mine[n]) ** 2)) / max(np.sqrt(np.sum(mine[n] ** 2)), 1e-6 * scale))
    print(f'  worst tensor: {worst} rel L2 {np.sqrt(np.sum((theirs[worst] - mine[worst]) ** 2)) / max(np.sqrt(np.sum(mine[worst] ** 2)), 1e-6 * scale):.2e}')
    total = float(np.sum(flat_mine ** 2))
    print(f'  {"largest gradients (PyTorch)":<56} {"norm":>10} {"share":>7} {"recorded":>10}')
    for n in sorted(names, key=lambda n: -np.sum(mine[n] ** 2))[:a.top]:
        nm = float(np.sqrt(np.sum(mine[n] ** 2)))
        print(f'  {n:<56} {nm:10.4g} {100 * nm * nm / total:6.1f}% {float(np.sqrt(np.sum(theirs[n] ** 2))):10.4g}')
    per = err.detach().double().numpy()
    print('  per-sample loss (t): ' + ', '.join(f'{per[i]:.3g} ({int(t[i])})' for i in np.argsort(-per)[:6]))


if __name__ == '__main__':
    main()
