"""The peer measurement for `ddpm-tool bench`: labml's UNet (annotated_deep_learning_paper_implementations,
diffusion/ddpm/unet.py, re-typed here class for class) in PyTorch on the CPU; median seconds per training step
(forward + backward + Adam on L_simple) or per sampling step (forward without grad + p_sample), images/s and
peak memory (ru_maxrss).

Run with Debian's PyTorch 1.13: apt-get install -y python3-torch libopenblas0-pthread, then
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 /usr/bin/python3 unet_step.py --preset small --mode train --threads 2
On a GPU (eager PyTorch, the peer of `ddpm-tool bench --backend cuda`): --device cuda [--tf32 | --bf16]; the step's time
then ends at a host synchronisation (loss.item(), out.sum().item()).
"""
import argparse, contextlib, json, math, resource, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    def __init__(self, n_channels):
        super().__init__()
        self.n_channels = n_channels
        self.lin1 = nn.Linear(n_channels // 4, n_channels)
        self.act = Swish()
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t):
        half_dim = self.n_channels // 8
        emb = math.log(10_000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=t.device) * -emb)
        emb = t[:, None] * emb[None, :]
        emb = torch.cat((emb.sin(), emb.cos()), dim=1)
        return self.lin2(self.act(self.lin1(emb)))


class ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels, time_channels, n_groups=32, dropout=0.1):
        super().__init__()
        self.norm1 = nn.GroupNorm(n_groups, in_channels)
        self.act1 = Swish()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(3, 3), padding=(1, 1))
        self.norm2 = nn.GroupNorm(n_groups, out_channels)
        self.act2 = Swish()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=(3, 3), padding=(1, 1))
        self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1)) if in_channels != out_channels else nn.Identity()
        self.time_emb = nn.Linear(time_channels, out_channels)
        self.time_act = Swish()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, t):
        h = self.conv1(self.act1(self.norm1(x)))
        h += self.time_emb(self.time_act(t))[:, :, None, None]
        h = self.conv2(self.dropout(self.act2(self.norm2(h))))
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    def __init__(self, n_channels, n_heads=1, d_k=None, n_groups=32):
        super().__init__()
        if d_k is None:
            d_k = n_channels
        self.norm = nn.GroupNorm(n_groups, n_channels)
        self.projection = nn.Linear(n_channels, n_heads * d_k * 3)
        self.output = nn.Linear(n_heads * d_k, n_channels)
        self.scale = d_k ** -0.5
        self.n_heads = n_heads
        self.d_k = d_k
        # labml never applies self.norm; ddpm-tool's attn_norm option (the original DDPM's attention) does.
        self.apply_norm = False

    def forward(self, x, t=None):
        batch_size, n_channels, height, width = x.shape
        h = self.norm(x) if self.apply_norm else x
        x = x.view(batch_size, n_channels, -1).permute(0, 2, 1)
        h = h.view(batch_size, n_channels, -1).permute(0, 2, 1)
        qkv = self.projection(h).view(batch_size, -1, self.n_heads, 3 * self.d_k)
        q, k, v = torch.chunk(qkv, 3, dim=-1)
        attn = torch.einsum('bihd,bjhd->bijh', q, k) * self.scale
        attn = attn.softmax(dim=2)
        res = torch.einsum('bijh,bjhd->bihd', attn, v)
        res = res.reshape(batch_size, -1, self.n_heads * self.d_k)
        res = self.output(res)
        res += x
        return res.permute(0, 2, 1).view(batch_size, n_channels, height, width)


class DownBlock(nn.Module):
    def __init__(self, in_channels, out_channels, time_channels, has_attn, n_groups):
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, time_channels, n_groups)
        self.attn = AttentionBlock(out_channels, n_groups=n_groups) if has_attn else nn.Identity()

    def forward(self, x, t):
        return self.attn(self.res(x, t))


class UpBlock(nn.Module):
    def __init__(self, in_channels, out_channels, time_channels, has_attn, n_groups):
        super().__init__()
        self.res = ResidualBlock(in_channels + out_channels, out_channels, time_channels, n_groups)
        self.attn = AttentionBlock(out_channels, n_groups=n_groups) if has_attn else nn.Identity()

    def forward(self, x, t):
        return self.attn(self.res(x, t))


class MiddleBlock(nn.Module):
    def __init__(self, n_channels, time_channels, n_groups):
        super().__init__()
        self.res1 = ResidualBlock(n_channels, n_channels, time_channels, n_groups)
        self.attn = AttentionBlock(n_channels, n_groups=n_groups)
        self.res2 = ResidualBlock(n_channels, n_channels, time_channels, n_groups)

    def forward(self, x, t):
        return self.res2(self.attn(self.res1(x, t)), t)


class Upsample(nn.Module):
    def __init__(self, n_channels):
        super().__init__()
        self.conv = nn.ConvTranspose2d(n_channels, n_channels, (4, 4), (2, 2), (1, 1))

    def forward(self, x, t):
        return self.conv(x)


class Downsample(nn.Module):
    def __init__(self, n_channels):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels, (3, 3), (2, 2), (1, 1))

    def forward(self, x, t):
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, image_channels=3, n_channels=64, ch_mults=(1, 2, 2, 4), is_attn=(False, False, True, True), n_blocks=2, n_groups=32,
                 attn_norm=False):
        super().__init__()
        n_resolutions = len(ch_mults)
        self.image_proj = nn.Conv2d(image_channels, n_channels, kernel_size=(3, 3), padding=(1, 1))
        self.time_emb = TimeEmbedding(n_channels * 4)
        down = []
        out_channels = in_channels = n_channels
        for i in range(n_resolutions):
            out_channels = in_channels * ch_mults[i]
            for _ in range(n_blocks):
                down.append(DownBlock(in_channels, out_channels, n_channels * 4, is_attn[i], n_groups))
                in_channels = out_channels
            if i < n_resolutions - 1:
                down.append(Downsample(in_channels))
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(out_channels, n_channels * 4, n_groups)
        up = []
        in_channels = out_channels
        for i in reversed(range(n_resolutions)):
            out_channels = in_channels
            for _ in range(n_blocks):
                up.append(UpBlock(in_channels, out_channels, n_channels * 4, is_attn[i], n_groups))
            out_channels = in_channels // ch_mults[i]
            up.append(UpBlock(in_channels, out_channels, n_channels * 4, is_attn[i], n_groups))
            in_channels = out_channels
            if i > 0:
                up.append(Upsample(in_channels))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(8, n_channels)
        self.act = Swish()
        self.final = nn.Conv2d(in_channels, image_channels, kernel_size=(3, 3), padding=(1, 1))
        for m in self.modules():
            if isinstance(m, AttentionBlock):
                m.apply_norm = attn_norm

    def forward(self, x, t):
        t = self.time_emb(t)
        x = self.image_proj(x)
        h = [x]
        for m in self.down:
            x = m(x, t)
            h.append(x)
        x = self.middle(x, t)
        for m in self.up:
            if isinstance(m, Upsample):
                x = m(x, t)
            else:
                s = h.pop()
                x = torch.cat((x, s), dim=1)
                x = m(x, t)
        return self.final(self.act(self.norm(x)))


PRESETS = {
    'tiny': dict(image_channels=1, n_channels=16, ch_mults=(1, 2), is_attn=(False, True), n_blocks=1, n_groups=8, batch=8),
    # ddpm-tool's small preset has no dropout (a short CPU run does not overfit); the others keep labml's 0.1.
    'small': dict(image_channels=1, n_channels=32, ch_mults=(1, 2, 2), is_attn=(False, False, True), n_blocks=2, n_groups=32, batch=64, dropout=0.0),
    'labml': dict(image_channels=3, n_channels=64, ch_mults=(1, 2, 2, 4), is_attn=(False, False, False, True), n_blocks=2, n_groups=32, batch=16),
}


def unet_from_config(mc):
    """labml's UNet for a ddpm-tool model config (the JSON of a checkpoint's "model" header key), dropout as it says."""
    model = UNet(image_channels=mc['image_channels'], n_channels=mc['n_channels'], ch_mults=tuple(mc['ch_mults']),
                 is_attn=tuple(bool(x) for x in mc['is_attn']), n_blocks=mc['n_blocks'], n_groups=mc.get('n_groups', 32),
                 attn_norm=bool(mc.get('attn_norm', False)))
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = mc.get('dropout', 0.0)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--preset', default='small', choices=PRESETS)
    ap.add_argument('--mode', default='train', choices=['train', 'sample'])
    ap.add_argument('--batch', type=int)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--tf32', action='store_true', help='allow TF32 tensor-core math on cuda (matmul and cuDNN)')
    ap.add_argument('--bf16', action='store_true', help='mixed precision on cuda: the forward pass and the loss under torch.autocast(bfloat16)')
    a = ap.parse_args()
    if a.bf16 and a.device != 'cuda':
        ap.error('--bf16 needs --device cuda')
    autocast = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.device == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    p = dict(PRESETS[a.preset])
    batch = a.batch or p.pop('batch')
    p.pop('batch', None)
    dropout = p.pop('dropout', 0.1)
    torch.manual_seed(0)
    model = UNet(**p).to(dev)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = dropout
    T = 1000
    beta = torch.linspace(0.0001, 0.02, T, device=dev)
    alpha = 1 - beta
    alpha_bar = torch.cumprod(alpha, dim=0)
    shape = (batch, p['image_channels'], 32, 32)
    times = []
    if a.mode == 'train':
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        for i in range(a.warmup + a.steps):
            x0 = torch.rand(shape, device=dev) * 2 - 1
            start = time.perf_counter()
            t = torch.randint(0, T, (batch,), device=dev)
            noise = torch.randn(shape, device=dev)
            ab = alpha_bar.gather(-1, t).reshape(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            with autocast():
                loss = F.mse_loss(noise, model(xt, t).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            if i >= a.warmup:
                times.append(time.perf_counter() - start)
    else:
        model.eval()
        x = torch.randn(shape, device=dev)
        t = torch.full((batch,), 500, dtype=torch.long, device=dev)
        with torch.no_grad():
            for i in range(a.warmup + a.steps):
                start = time.perf_counter()
                with autocast():
                    eps = model(x, t).float()
                a_t = alpha.gather(-1, t).reshape(-1, 1, 1, 1)
                ab = alpha_bar.gather(-1, t).reshape(-1, 1, 1, 1)
                mean = 1 / a_t.sqrt() * (x - (1 - a_t) / (1 - ab).sqrt() * eps)
                out = mean + beta.gather(-1, t).reshape(-1, 1, 1, 1).sqrt() * torch.randn(shape, device=dev)
                out.sum().item()
                if i >= a.warmup:
                    times.append(time.perf_counter() - start)
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() if a.device == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    where = f"cuda {'bf16 autocast' if a.bf16 else 'tf32 ' + ('on' if a.tf32 else 'off')}" if a.device == 'cuda' else f"threads {a.threads}"
    print(f"torch {torch.__version__} {a.mode} {a.preset} batch {batch} {where}: median {med:.4f} s = {batch / med:.2f} images/s; peak memory {peak / 1e9:.2f} GB")
    print(json.dumps(dict(peer='pytorch', version=torch.__version__, mode=a.mode, preset=a.preset, batch=batch, threads=a.threads, device=a.device, tf32=a.tf32, bf16=a.bf16,
                          median_s=med, images_per_s=batch / med, peak_memory_bytes=peak)))


if __name__ == '__main__':
    main()
