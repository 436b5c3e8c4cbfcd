"""The training recipe of a ddpm-tool run, re-run in PyTorch: a cross-check of Ddpm's trainer on sample quality.

Reads the model, diffusion and training configs from the header of a ddpm-tool checkpoint (--like), trains
labml's UNet (unet_step.py beside this file) with the same recipe on the same IDX images -- v or eps target,
linear or cosine schedule, Adam, linear warm-up and cosine decay, global grad-norm clipping, EMA with warm-up,
padding to the model's size, data range -- and writes the EMA weights under labml's names, with the model and
diffusion configs in the header, so that `ddpm-tool eval --checkpoint OUT` scores them like a Ddpm run.

Run with Debian's PyTorch (apt-get install -y python3-torch python3-numpy):
  OMP_NUM_THREADS=2 /usr/bin/python3 train_recipe.py --like runs/base/checkpoint-0002000.safetensors \
      --data data/fashion-mnist/train-images-idx3-ubyte.gz --seed 1 --out torch-seed1.safetensors
  ddpm-tool eval --checkpoint torch-seed1.safetensors --n 1000
"""
import argparse, gzip, json, math, struct, sys, time, os

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_step import unet_from_config  # noqa: E402


def read_safetensors_header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n))


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {'__metadata__': metadata}, 0, []
    for name, t in tensors.items():
        b = t.detach().cpu().contiguous().numpy().astype('<f4').tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(t.shape), 'data_offsets': [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_idx_images(path):
    data = gzip.open(path, 'rb').read() if path.endswith('.gz') else open(path, 'rb').read()
    magic, n, h, w = struct.unpack('>IIII', data[:16])
    if magic != 0x00000803:
        raise SystemExit(f'{path}: not an IDX image file (magic {magic:#x})')
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, h, w)


def alpha_bar(d):
    T = d['n_steps']
    if d.get('schedule', 'linear').lower() == 'cosine':
        s = 0.008
        f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(T)], dtype=np.float64)
    else:
        betas = np.linspace(d.get('beta_start', 1e-4), d.get('beta_end', 0.02), T, dtype=np.float64)
    return np.cumprod(1 - betas)


def lr_at(tc, step):
    lr, warm = tc['lr'], tc.get('warmup_steps', 0)
    if warm > 0 and step < warm:
        return lr * step / warm
    if tc.get('lr_schedule', 'Constant').lower() == 'constant':
        return lr
    p = min(max((step - warm) / (tc['decay_steps'] - warm), 0.0), 1.0)
    final = tc.get('lr_final', 0.0)
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--like', required=True, help='a ddpm-tool checkpoint whose configs give the recipe')
    ap.add_argument('--data', required=True, help='IDX image file (.gz or raw), as ddpm-tool train --data')
    ap.add_argument('--steps', type=int, help='optimisation steps (default: the checkpoint\'s step count)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', required=True)
    ap.add_argument('--log', help='CSV of step, loss, grad_norm, lr (the columns of ddpm-tool\'s loss.csv)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    meta = read_safetensors_header(a.like)['__metadata__']
    mc, dc, tc = (json.loads(meta[k]) for k in ('model', 'diffusion', 'training'))
    if mc.get('num_classes', 0):
        raise SystemExit(f'{a.like}: a class-conditional model; this script trains the unconditional recipe (train --no-classes)')
    steps = a.steps or int(meta['step'])
    size, channels = mc['image_size'], mc['image_channels']
    model = unet_from_config(mc)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    images = read_idx_images(a.data)
    n, _, h, w = images.shape
    top, left = (size - h) // 2, (size - w) // 2
    x_all = np.zeros((n, channels, size, size), dtype=np.float32)
    x_all[:, :, top:top + h, left:left + w] = images / np.float32(255)
    zero_one = 'zero' in str(dc.get('data_range', 'MinusOneToOne')).lower()
    if not zero_one:
        x_all = 2 * x_all - 1
    x_all = torch.from_numpy(x_all)
    hflip = tc.get('hflip', False)

    ab = torch.tensor(alpha_bar(dc), dtype=torch.float64)
    T, B = dc['n_steps'], tc['batch_size']
    v_pred = str(dc.get('prediction', 'Eps')).lower() == 'v'
    opt = torch.optim.Adam(model.parameters(), lr=tc['lr'], betas=(tc['beta1'], tc['beta2']), eps=tc['adam_eps'],
                           weight_decay=tc.get('weight_decay', 0.0))
    clip, decay, ema_warm = tc.get('grad_clip', 1.0), tc.get('ema_decay', 0.0), tc.get('ema_warmup', True)
    print(f'recipe: {steps} steps, batch {B}, lr {tc["lr"]} (warm-up {tc.get("warmup_steps", 0)}, {tc.get("lr_schedule")}), '
          f'clip {clip}, EMA {decay}, {"v" if v_pred else "eps"} prediction, T {T}, {n} images {h}x{w} -> {size}x{size}', flush=True)

    order, pos, t0 = rng.permutation(n), 0, time.time()
    log = open(a.log, 'w') if a.log else None
    if log:
        log.write('step,loss,grad_norm,lr\n')
    model.train()
    for step in range(1, steps + 1):
        if pos + B > n:
            order, pos = rng.permutation(n), 0
        x0 = x_all[order[pos:pos + B]]
        pos += B
        if hflip:
            flip = torch.from_numpy(rng.random(B) < 0.5)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, T, (B,))
        eps = torch.randn_like(x0)
        a_t = ab[t].sqrt().float()[:, None, None, None]
        s_t = (1 - ab[t]).sqrt().float()[:, None, None, None]
        xt = a_t * x0 + s_t * eps
        target = a_t * eps - s_t * x0 if v_pred else eps
        loss = F.mse_loss(model(xt, t.float()), target)
        for g in opt.param_groups:
            g['lr'] = lr_at(tc, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip) if clip > 0 else torch.tensor(0.0)
        opt.step()
        if decay > 0:
            d = min(decay, (1 + step) / (10 + step)) if ema_warm else decay
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(d).add_(v, alpha=1 - d)
        if log:
            log.write(f'{step},{loss.item():.8g},{float(gnorm):.6g},{lr_at(tc, step):.6g}\n')
        if step % 100 == 0 or step == 1:
            el = time.time() - t0
            print(f'step {step:5d}/{steps}  loss {loss.item():.4f}  |g| {float(gnorm):.2f}  {el:.0f} s', flush=True)

    if log:
        log.close()
    weights = ema if decay > 0 else model.state_dict()
    out_meta = {'model': meta['model'], 'diffusion': meta['diffusion'],
                'trained_by': f'train_recipe.py (PyTorch {torch.__version__}), seed {a.seed}, {steps} steps'}
    write_safetensors(a.out, {k: v for k, v in weights.items()}, out_meta)
    print(f'wrote {a.out}', flush=True)


if __name__ == '__main__':
    main()
