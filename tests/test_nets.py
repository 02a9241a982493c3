"""The VAE and classifier networks against their authors' code, transcribed here layer by layer in plain torch
(MoPoE `mmnist/networks/ConvNetworksImgCMNIST.py`, `mnistsvhntext/networks/ConvNetworks{ImgMNIST,ImgSVHN,
TextMNIST}.py`; mmvmvae `networks/ConvNetworksPolyMNIST.py`, `networks/ClfImgPolyMNIST.py`; mmvmvae-hippocampal
`networks/NetworksRatsspike.py`, `networks/ClfOdorRats.py`): the same parameter shapes in the same order, and the
same outputs once mmbench's weights are copied into the transcription. Parameter counts are worked out by hand.
The CelebA residual nets are checked block by block against the formula of mmbench/nets/celeba.py's docstring,
with their spatial sizes and parameter counts."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data.base import Modality
from mmbench.registry import ARCHITECTURES


def conv(cin, cout, k, bias=True):
    """Parameters of a conv layer (any dimension via k = kernel elements)."""
    return cin * cout * k + (cout if bias else 0)


def linear(fin, fout, bias=True):
    return fin * fout + (fout if bias else 0)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def same_function(ours, ref, *inputs, atol=1e-5):
    """Copy `ours`' parameters and buffers (in order) into `ref` after checking their shapes; then the same outputs
    in eval mode."""
    ps, qs = list(ours.parameters()) + list(ours.buffers()), list(ref.parameters()) + list(ref.buffers())
    assert [tuple(p.shape) for p in ps] == [tuple(q.shape) for q in qs]
    with torch.no_grad():
        for p, q in zip(ps, qs):
            q.copy_(p)
        a, b = ours.eval()(*inputs), ref.eval()(*inputs)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    assert len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=atol) for x, y in zip(a, b))
    return a


class Heads(nn.Module):
    """trunk -> (mu, logvar) linear heads, the authors' encoders' ending."""

    def __init__(self, trunk, features, latent, bias=True):
        super().__init__()
        self.trunk, self.mu, self.logvar = trunk, nn.Linear(features, latent, bias), nn.Linear(features, latent, bias)

    def forward(self, x):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


# ----- PolyMNIST CNN (MoPoE EncoderImg / DecoderImg; mmvmvae Encoder / Decoder) ----------------------------------

def test_polymnist_cnn_is_the_authors_and_has_their_14m_parameters():
    torch.manual_seed(0)
    L, m = 16, Modality("m0", (3, 28, 28))
    arch = ARCHITECTURES.get("polymnist_cnn")
    enc_ref = Heads(nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2048, L), nn.ReLU()), L, L)
    dec_ref = nn.Sequential(
        nn.Linear(L, 2048), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)), nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, 3, 3, 2, 1, output_padding=1))  # no output activation
    x = torch.rand(2, 3, 28, 28)
    same_function(arch.encoder(m, L), enc_ref, x)
    (out,) = same_function(arch.decoder(m, L), dec_ref, torch.randn(2, L))
    assert out.shape == (2, 3, 28, 28) and (out < 0).any()  # a Laplace location, not a sigmoid
    # MoPoE's PolyMNIST model (latent 512, five modalities): 14,056,975 parameters (docs/provenance.md: "14 M")
    enc = conv(3, 32, 9) + conv(32, 64, 9) + conv(64, 128, 9) + linear(2048, 512) + 2 * linear(512, 512)
    dec = linear(512, 2048) + conv(128, 64, 9) + conv(64, 32, 9) + conv(32, 3, 9)
    assert (enc, dec) == (1_667_648, 1_143_747)
    with torch.device("meta"):  # shapes only
        assert n_params(arch.encoder(m, 512)) == enc and n_params(arch.decoder(m, 512)) == dec
    assert 5 * (enc + dec) == 14_056_975


def test_polymnist_clf_parameters():
    # MoPoE ClfImg: conv 3->10 k4, conv 10->20 k4, 980 -> 128 -> 10 (outputs: test_authors_classifiers.py)
    clf = ARCHITECTURES.get("polymnist_clf").classifier(Modality("m0", (3, 28, 28)), 10)
    assert n_params(clf) == conv(3, 10, 16) + conv(10, 20, 16) + linear(980, 128) + linear(128, 10) == 130_568


# ----- PolyMNIST ResNets (mmvmvae ResnetEncoder / ResnetDecoder / ClfImgPolyMNIST) -------------------------------

def actvn(x):
    return F.leaky_relu(x, 2e-1)


class RefResnetBlock(nn.Module):
    """mmvmvae ResnetBlock: x_s + 0.1 · conv_1(actvn(conv_0(actvn(x)))), 1×1 bias-free learned shortcut."""

    def __init__(self, fin, fout):
        super().__init__()
        hidden = min(fin, fout)
        self.conv_0, self.conv_1 = nn.Conv2d(fin, hidden, 3, 1, 1), nn.Conv2d(hidden, fout, 3, 1, 1)
        self.conv_s = nn.Conv2d(fin, fout, 1, 1, 0, bias=False) if fin != fout else None

    def forward(self, x):
        x_s = x if self.conv_s is None else self.conv_s(x)
        return x_s + 0.1 * self.conv_1(actvn(self.conv_0(actvn(x))))


def ref_resnet_trunk():
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), RefResnetBlock(64, 64), nn.AvgPool2d(3, stride=2, padding=1),
                         RefResnetBlock(64, 128), nn.AvgPool2d(3, stride=2, padding=1), RefResnetBlock(128, 256))


class RefResnetEncoder(nn.Module):
    def __init__(self, latent):
        super().__init__()
        self.trunk = ref_resnet_trunk()
        self.fc_mu, self.fc_lv = nn.Linear(256 * 49, latent), nn.Linear(256 * 49, latent)

    def forward(self, x):
        out = self.trunk(x).view(len(x), 256 * 49)
        return self.fc_mu(out), self.fc_lv(out)


class RefResnetDecoder(nn.Module):
    def __init__(self, latent):
        super().__init__()
        self.fc = nn.Linear(latent, 256 * 49)
        self.resnet = nn.Sequential(RefResnetBlock(256, 128), nn.Upsample(scale_factor=2), RefResnetBlock(128, 64),
                                    nn.Upsample(scale_factor=2), RefResnetBlock(64, 64))
        self.conv_img = nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, z):
        return self.conv_img(actvn(self.resnet(self.fc(z).view(len(z), 256, 7, 7))))


class RefResnetClf(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.fc = ref_resnet_trunk(), nn.Linear(256 * 49, 10)

    def forward(self, x):
        return self.fc(actvn(self.trunk(x).view(len(x), 256 * 49)))


def test_polymnist_resnet_is_the_authors():
    torch.manual_seed(0)
    L, m = 8, Modality("m0", (3, 28, 28))
    x = torch.rand(2, 3, 28, 28)
    same_function(ARCHITECTURES.get("polymnist_resnet").encoder(m, L), RefResnetEncoder(L), x)
    same_function(ARCHITECTURES.get("polymnist_resnet").decoder(m, L), RefResnetDecoder(L), torch.randn(2, L))
    same_function(ARCHITECTURES.get("polymnist_resnet_clf").classifier(m, 10), RefResnetClf(), x)
    block = lambda fin, fout: conv(fin, min(fin, fout), 9) + conv(min(fin, fout), fout, 9) + (  # noqa: E731
        conv(fin, fout, 1, bias=False) if fin != fout else 0)
    trunk = conv(3, 64, 9) + block(64, 64) + block(64, 128) + block(128, 256)
    assert trunk == 670_144
    assert n_params(ARCHITECTURES.get("polymnist_resnet").encoder(m, L)) == trunk + 2 * linear(12544, L)


# ----- Rats (mmvmvae-hippocampal Encoder / Decoder / ClfOdorRats) ------------------------------------------------

class LogSigmaHeads(Heads):
    """The rats encoders' ending: the second head is a log σ, σ = exp(head) + 1e-6 (mmvmvae-hippocampal
    spike_vae.py reparametrize), given to the methods as the log variance 2 log σ."""

    def forward(self, x):
        mu, head = super().forward(x)
        return mu, 2 * torch.log(torch.exp(head.double()) + 1e-6).to(head.dtype)


def test_rat_mlps_are_the_authors():
    torch.manual_seed(0)
    m, L, D = Modality("rat", (46, 10)), 2, 460  # the smallest rat: 46 neurons × 10 bins
    enc_ref = LogSigmaHeads(nn.Sequential(nn.Flatten(), nn.Linear(D, D), nn.LeakyReLU(), nn.Linear(D, D),
                                          nn.LeakyReLU(), nn.Linear(D, L), nn.LeakyReLU()), L, L)
    dec_ref = nn.Sequential(nn.Linear(L, D), nn.LeakyReLU(), nn.Linear(D, D), nn.LeakyReLU(), nn.Linear(D, D),
                            nn.Unflatten(1, (46, 10)))  # linear output: the mean of the fixed-variance Gaussian
    clf_ref = nn.Sequential(nn.Flatten(), nn.Linear(D, 1024), nn.LeakyReLU(), nn.Linear(1024, 512), nn.LeakyReLU(),
                            nn.Linear(512, 256), nn.LeakyReLU(), nn.Linear(256, 64), nn.LeakyReLU(), nn.Linear(64, 4))
    x = torch.randn(3, 46, 10)
    same_function(ARCHITECTURES.get("rat_mlp").encoder(m, L), enc_ref, x)
    (out,) = same_function(ARCHITECTURES.get("rat_mlp").decoder(m, L), dec_ref, torch.randn(3, L) * 3)
    assert (out < 0).any()
    same_function(ARCHITECTURES.get("rat_clf").classifier(m, 4), clf_ref, x)
    assert n_params(ARCHITECTURES.get("rat_mlp").encoder(m, L)) == 2 * linear(D, D) + linear(D, L) + 2 * linear(L, L)


# ----- MNIST-SVHN-Text (MoPoE EncoderImg/DecoderImg MNIST, EncoderSVHN/DecoderSVHN, EncoderText/DecoderText) -----

def test_mnist_svhn_text_nets_are_the_authors():
    torch.manual_seed(0)
    L, alphabet = 20, 71
    mods = {"mnist": Modality("mnist", (1, 28, 28)), "svhn": Modality("svhn", (3, 32, 32)),
            "text": Modality("text", (8, alphabet), kind="text")}
    arch = ARCHITECTURES.get("mnist_svhn_text")

    class ToChannels(nn.Module):
        def forward(self, x):
            return x.transpose(-2, -1)

    refs = {
        "mnist": (Heads(nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU()), 400, L),
                  nn.Sequential(nn.Linear(L, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid(),
                                nn.Unflatten(1, (1, 28, 28)))),
        "svhn": (Heads(nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                                     nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 4, 2, 0), nn.ReLU(),
                                     nn.Flatten()), 128, L),
                 nn.Sequential(nn.Linear(L, 128), nn.Unflatten(1, (128, 1, 1)), nn.ReLU(),
                               nn.ConvTranspose2d(128, 64, 4, 1, 0), nn.ReLU(), nn.ConvTranspose2d(64, 64, 4, 2, 1),
                               nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                               nn.ConvTranspose2d(32, 3, 4, 2, 1))),
        "text": (Heads(nn.Sequential(ToChannels(), nn.Conv1d(alphabet, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 4, 2, 1),
                                     nn.ReLU(), nn.Conv1d(128, 128, 4, 2, 0), nn.ReLU(), nn.Flatten()), 128, L),
                 nn.Sequential(nn.Linear(L, 128), nn.Unflatten(1, (128, 1)), nn.ConvTranspose1d(128, 128, 4, 1, 0),
                               nn.ReLU(), nn.ConvTranspose1d(128, 128, 4, 2, 1), nn.ReLU(), nn.Conv1d(128, alphabet, 1),
                               ToChannels())),  # logits (the authors' LogSoftmax is not copied, docs/provenance.md)
    }
    xs = {"mnist": torch.rand(2, 1, 28, 28), "svhn": torch.rand(2, 3, 32, 32),
          "text": F.one_hot(torch.randint(0, alphabet, (2, 8)), alphabet).float()}
    for name, (enc_ref, dec_ref) in refs.items():
        same_function(arch.encoder(mods[name], L), enc_ref, xs[name])
        (out,) = same_function(arch.decoder(mods[name], L), dec_ref, torch.randn(2, L))
        assert out.shape == (2, *mods[name].shape), name
    # the mmbench text classifier (its own simplification: the encoder's trunk, dropout, linear 128 -> 10)
    text_clf = ARCHITECTURES.get("mnist_svhn_text_clf").classifier(mods["text"], 10)
    assert n_params(text_clf) == conv(alphabet, 128, 1) + conv(128, 128, 4) + conv(128, 128, 4) + linear(128, 10)


# ----- CelebA residual nets (MoPoE celeba/networks/, DIM 128; mmvmvae filter_dim 64) --------------------------------

class RefResBlock(nn.Module):
    """mmbench/nets/celeba.py's block as its docstring states it: a · (conv(k, s, p) + BN) + b · (BN, ReLU, 1×1 conv,
    dropout, BN, ReLU, conv(k, s, p), dropout); transposed convs when up; 2-d bias-free, 1-d with bias."""

    def __init__(self, cin, cout, k, s, p, dims, up, a, b):
        super().__init__()
        bias = dims == 1
        Conv = {(1, False): nn.Conv1d, (2, False): nn.Conv2d, (1, True): nn.ConvTranspose1d,
                (2, True): nn.ConvTranspose2d}[dims, up]
        BN = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.bn1, self.conv1 = BN(cin), Conv(cin, cin, 1, bias=bias)
        self.bn2, self.conv2 = BN(cin), Conv(cin, cout, k, s, p, bias=bias)
        self.conv_s, self.bn_s = Conv(cin, cout, k, s, p, bias=bias), BN(cout)  # registered in mmbench's order
        self.a, self.b = a, b

    def forward(self, x):  # eval mode: dropout is the identity
        h = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.a * self.bn_s(self.conv_s(x)) + self.b * h


@pytest.mark.parametrize("dims,up", [(2, False), (2, True), (1, False), (1, True)])
@pytest.mark.parametrize("a,b", [(2.0, 0.3), (1.0, 1.0)])
def test_celeba_residual_block_is_the_stated_formula(dims, up, a, b):
    from mmbench.nets.celeba import ResBlock

    torch.manual_seed(0)
    ours = ResBlock(4, 6, 4, 2, 1, dims=dims, up=up, a=a, b=b)
    ref = RefResBlock(4, 6, 4, 2, 1, dims, up, a, b)
    for m in ours.modules():  # non-trivial batch-norm statistics and affines, so a misplaced batch norm shows
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    same_function(ours, ref, torch.randn(3, 4, *([8] * dims)))


def sizes(seq, x):
    """The last dimension after each layer of `seq` (the spatial size / text length)."""
    out = []
    for layer in seq:
        x = layer(x)
        out.append(x.shape[-1] if x.dim() > 2 else None)
    return out


def block_params(cin, cout, k, dims):
    """BN(cin), 1×1 conv, BN(cin), conv k, shortcut conv k, BN(cout); 1-d convs have biases, 2-d ones do not."""
    bias = dims == 1
    return 2 * cin + conv(cin, cin, 1, bias) + 2 * cin + 2 * conv(cin, cout, k, bias) + 2 * cout


def test_celeba_nets_sizes_and_parameter_counts():
    from mmbench.nets.celeba import image_generator, image_trunk, text_generator, text_trunk

    A = 71  # MoPoE's alphabet
    img, text = Modality("img", (3, 64, 64)), Modality("text", (256, A), kind="text")
    # spatial sizes of the docstring (MoPoE FeatureExtractorImg / DataGeneratorImg / ...Text), on a narrow copy
    assert sizes(image_trunk(3, dim=4), torch.zeros(2, 3, 64, 64))[:-1] == [33, 16, 8, 4, 1]
    assert sizes(image_generator(5, 3, dim=4), torch.zeros(2, 5))[2:] == [4, 8, 16, 32, 64]
    assert sizes(text_trunk(A, [4 * i for i in (1, 2, 3, 4, 5, 5, 5)], 4), torch.zeros(2, 256, A))[1:-1] == [
        128, 64, 32, 16, 8, 4, 1]
    assert sizes(text_generator(5, A, dim=4), torch.zeros(2, 5))[2:-1] == [4, 8, 16, 32, 64, 128, 256]

    def counts(dim, L, head_bias):
        w = [dim * i for i in range(1, 6)]
        img_trunk = conv(3, dim, 9, bias=False) + sum(block_params(a, b, 16, 2) for a, b in zip(w, w[1:]))
        wt = [dim * i for i in (1, 2, 3, 4, 5, 5, 5)]
        txt_trunk = conv(A, dim, 4) + sum(block_params(a, b, 4, 1) for a, b in zip(wt, wt[1:]))
        heads = 2 * linear(5 * dim, L, head_bias)
        wd = w[::-1]
        img_dec = linear(L, 5 * dim) + sum(block_params(a, b, 16, 2) for a, b in zip(wd, wd[1:])) + conv(dim, 3, 9)
        wtd = wt[::-1]
        txt_dec = linear(L, 5 * dim) + sum(block_params(a, b, 4, 1) for a, b in zip(wtd, wtd[1:])) + conv(dim, A, 4)
        return img_trunk + heads, txt_trunk + heads, img_dec, txt_dec

    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        for name, dim, head_bias in (("celeba_resnet", 128, True), ("celeba_mmvm", 64, False)):
            arch = ARCHITECTURES.get(name)
            got = (n_params(arch.encoder(img, 32)), n_params(arch.encoder(text, 32)),
                   n_params(arch.decoder(img, 32)), n_params(arch.decoder(text, 32)))
            assert got == counts(dim, 32, head_bias), name
            blocks = [b for net in (arch.encoder(img, 32), arch.encoder(text, 32), arch.decoder(img, 32),
                                    arch.decoder(text, 32)) for b in net.modules() if hasattr(b, "shortcut")]
            weights = {"celeba_resnet": (2.0, 0.3), "celeba_mmvm": (1.0, 1.0)}[name]  # a, b of every block
            assert len(blocks) == 20 and {(b.a, b.b) for b in blocks} == {weights}
            assert {m.p for b in blocks for m in b.modules() if isinstance(m, nn.modules.dropout._DropoutNd)} == {0.5}
        clfs = ARCHITECTURES.get("celeba_clf")
        w = [128 * i for i in range(1, 6)]
        wt = [128 * i for i in range(1, 8)]
        assert n_params(clfs.classifier(img, 40)) == conv(3, 128, 9, bias=False) + sum(
            block_params(a, b, 16, 2) for a, b in zip(w, w[1:])) + linear(640, 40)
        assert n_params(clfs.classifier(text, 40)) == conv(A, 128, 3) + sum(
            block_params(a, b, 4, 1) for a, b in zip(wt, wt[1:])) + linear(896, 40)


# ----- behaviours a third mutation pass found unguarded: the dropout layers, which eval mode hides --------------

def same_in_training(ours, ref, x, seed=0):
    """Copy `ours`' parameters and buffers (in order) into `ref` after checking their shapes; then the same outputs in
    training mode from the same random state: only the same dropout layers (kind, rate and place) draw the same
    masks (Dropout2d drops whole channels, Dropout single values)."""
    ps, qs = list(ours.parameters()) + list(ours.buffers()), list(ref.parameters()) + list(ref.buffers())
    assert [tuple(p.shape) for p in ps] == [tuple(q.shape) for q in qs]
    with torch.no_grad():
        for p, q in zip(ps, qs):
            q.copy_(p)
        torch.manual_seed(seed)
        a = ours.train()(x)
        torch.manual_seed(seed)
        b = ref.train()(x)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, ours.eval()(x), atol=1e-5)  # dropout was active
    return a


class LastAxisFirst(nn.Module):
    def forward(self, x):
        return x.transpose(-2, -1)


def test_digit_classifiers_drop_out_as_their_authors():
    # MoPoE mmnist/networks/ConvNetworkImgClfCMNIST.py ClfImg (Dropout2d after each conv, Dropout after the hidden
    # linear); mnistsvhntext/networks/ConvNetworkImgClfMNIST.py ClfImg (Dropout before the linear);
    # ConvNetworkImgClfSVHN.py ClfImgSVHN (conv, Dropout, BN, ReLU); mmbench's text classifier: the text encoder's
    # trunk, Dropout 0.5, linear (its own simplification, mmbench/nets/mnist_svhn_text.py). Logits, no sigmoid.
    torch.manual_seed(0)
    poly = nn.Sequential(nn.Conv2d(3, 10, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(), nn.Conv2d(10, 20, 4, 2, 1),
                         nn.Dropout2d(0.5), nn.ReLU(), nn.Flatten(), nn.Linear(980, 128), nn.Dropout(0.5), nn.ReLU(),
                         nn.Linear(128, 10))
    same_in_training(ARCHITECTURES.get("polymnist_clf").classifier(Modality("m0", (3, 28, 28)), 10), poly,
                     torch.rand(8, 3, 28, 28))
    clfs = ARCHITECTURES.get("mnist_svhn_text_clf")
    mnist = nn.Sequential(nn.Conv2d(1, 32, 4, 2), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(), nn.Conv2d(64, 128, 4, 2),
                          nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(128, 10))
    same_in_training(clfs.classifier(Modality("mnist", (1, 28, 28)), 10), mnist, torch.rand(8, 1, 28, 28))
    svhn = []
    for cin, cout, pad in ((3, 32, 1), (32, 64, 1), (64, 64, 1), (64, 128, 0)):
        svhn += [nn.Conv2d(cin, cout, 4, 2, pad), nn.Dropout(0.5), nn.BatchNorm2d(cout), nn.ReLU()]
    same_in_training(clfs.classifier(Modality("svhn", (3, 32, 32)), 10),
                     nn.Sequential(*svhn, nn.Flatten(), nn.Linear(128, 10)), torch.rand(8, 3, 32, 32))
    text = nn.Sequential(LastAxisFirst(), nn.Conv1d(71, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 4, 2, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 4, 2, 0), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(128, 10))
    same_in_training(clfs.classifier(Modality("text", (8, 71), kind="text"), 10), text,
                     F.one_hot(torch.randint(0, 71, (8, 8)), 71).float())


class AuthorsCelebABlock(nn.Module):
    """MoPoE celeba/networks/ResidualBlocks.py ResidualBlock{1,2}d[Transpose]Conv: BN, ReLU, 1×1 conv, dropout, BN,
    ReLU, conv, dropout; Dropout2d in the 2-d blocks, Dropout in the 1-d ones; a · downsample(x) + b · branch
    (the shortcut registered first, as mmbench's)."""

    def __init__(self, cin, cout, dims, up):
        super().__init__()
        bias = dims == 1
        Conv = {(1, False): nn.Conv1d, (2, False): nn.Conv2d, (1, True): nn.ConvTranspose1d,
                (2, True): nn.ConvTranspose2d}[dims, up]
        BN, Drop = (nn.BatchNorm1d, nn.Dropout) if dims == 1 else (nn.BatchNorm2d, nn.Dropout2d)
        self.downsample = nn.Sequential(Conv(cin, cout, 4, 2, 1, bias=bias), BN(cout))
        self.bn1, self.conv1, self.dropout1 = BN(cin), Conv(cin, cin, 1, bias=bias), Drop(0.5)
        self.bn2, self.conv2, self.dropout2 = BN(cin), Conv(cin, cout, 4, 2, 1, bias=bias), Drop(0.5)

    def forward(self, x):
        out = self.dropout1(self.conv1(torch.relu(self.bn1(x))))
        out = self.dropout2(self.conv2(torch.relu(self.bn2(out))))
        return 2.0 * self.downsample(x) + 0.3 * out


@pytest.mark.parametrize("dims,up", [(2, False), (2, True), (1, False), (1, True)])
def test_celeba_residual_blocks_drop_out_as_the_authors(dims, up):
    from mmbench.nets.celeba import ResBlock

    torch.manual_seed(0)
    ours = ResBlock(6, 5, 4, 2, 1, dims=dims, up=up)
    ref = AuthorsCelebABlock(6, 5, dims, up)
    ref_order = [ref.bn1, ref.conv1, ref.bn2, ref.conv2, ref.downsample[0], ref.downsample[1]]
    ours_order = [ours.branch[0], ours.branch[2], ours.branch[4], ours.branch[6], ours.shortcut[0], ours.shortcut[1]]
    with torch.no_grad():  # parameters copied module by module (the registration orders differ)
        for o, r in zip(ours_order, ref_order):
            for p, q in zip(list(o.parameters()) + list(o.buffers()), list(r.parameters()) + list(r.buffers())):
                q.copy_(p)
    x = torch.randn(4, 6, *([8] * dims))
    torch.manual_seed(1)
    a = ours.train()(x)
    torch.manual_seed(1)
    assert torch.allclose(a, ref.train()(x), atol=1e-5)


def test_celeba_classifiers_end_in_dropout_then_linear():
    # MoPoE celeba/networks/ConvNetworkImgClfCelebA.py ClfImg and ConvNetworkTextClfCelebA.py ClfText: the features,
    # Dropout 0.5, linear to the 40 attributes (the trunk shared here, so only the head is compared)
    clfs = ARCHITECTURES.get("celeba_clf")
    torch.manual_seed(0)
    for modality, x in ((Modality("img", (3, 64, 64)), torch.rand(4, 3, 64, 64)),
                        (Modality("text", (256, 71), kind="text"), F.one_hot(torch.randint(0, 71, (4, 256)), 71).float())):
        ours = clfs.classifier(modality, 40)
        trunk, linear = ours[0], ours[-1]
        ref = nn.Sequential(trunk, nn.Dropout(0.5), nn.Linear(linear.in_features, 40))
        with torch.no_grad():
            ref[2].weight.copy_(linear.weight), ref[2].bias.copy_(linear.bias)
            trunk.eval()  # the trunk's own dropout off: the head's dropout alone differs between the passes
            torch.manual_seed(1)
            a = nn.Sequential(*list(ours)[1:]).train()(trunk(x))
            torch.manual_seed(1)
            b = nn.Sequential(*list(ref)[1:]).train()(trunk(x))
        assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, ours.eval()(x), atol=1e-5), modality.name


def test_celeba_resnet_keeps_the_default_initialisation_and_lv0_zeroes_only_the_log_variance_heads():
    # mmbench/nets/celeba.py: all layers use PyTorch's default initialisation, as the authors' code, except in
    # celeba_resnet_lv0, whose encoders' log-variance heads (weights and bias) start at zero
    img = Modality("img", (3, 64, 64))
    torch.manual_seed(0)
    a = ARCHITECTURES.get("celeba_resnet").encoder(img, 8)
    torch.manual_seed(0)
    b = ARCHITECTURES.get("celeba_resnet_lv0").encoder(img, 8)
    assert a.logvar.weight.std() > 0 and a.logvar.bias.std() > 0
    assert not b.logvar.weight.any() and not b.logvar.bias.any()
    rest = [(n, p, q) for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()) if not n.startswith("logvar.")]
    assert len(rest) == len(list(a.parameters())) - 2 and all(torch.equal(p, q) for _, p, q in rest)


# ----- behaviours the fifteenth mutation pass found unguarded: head order, dropout and batch-norm settings that eval-mode
# comparisons hide ------------------------------------------------------------------------------------------------

def test_celeba_heads_return_mu_then_log_variance_in_training_mode_too():
    # MoPoE celeba/networks/FeatureCompressor.py and mmvmvae networks/FeatureCompressor.py, LinearFeatureCompressor
    # forward: the flattened features go, untouched, into the mu head and the logvar head, returned in that order
    from mmbench.nets.celeba import GaussianHeads

    torch.manual_seed(0)
    heads, x = GaussianHeads(nn.Identity(), 64, 3).train(), torch.randn(4, 64)
    mu, logvar = heads(x)
    assert torch.equal(mu, heads.mu(x)) and torch.equal(logvar, heads.logvar(x))
    # ... and every CelebA encoder is such a pair of heads on its trunk (celeba_resnet_lv0 zeroes the second one)
    with torch.device("meta"):
        for name in ("celeba_resnet", "celeba_resnet_lv0", "celeba_mmvm"):
            for m in (Modality("img", (3, 64, 64)), Modality("text", (256, 71), kind="text")):
                assert type(ARCHITECTURES.get(name).encoder(m, 4)) is GaussianHeads, name
    # the MM-VAMP heads keep PyTorch's default initialisation (LinearFeatureCompressor: nn.Linear(..., bias=False))
    mmvm = ARCHITECTURES.get("celeba_mmvm").encoder(Modality("img", (3, 64, 64)), 4)
    assert mmvm.logvar.weight.std() > 0 and mmvm.mu.weight.std() > 0


def test_mst_rats_and_resnet_nets_have_no_dropout():
    # MoPoE mnistsvhntext/networks/ConvNetworks{ImgMNIST,ImgSVHN,TextMNIST}.py, mmvmvae networks/
    # ConvNetworksPolyMNIST.py ResnetEncoder/ResnetDecoder, ClfImgPolyMNIST.py and mmvmvae-hippocampal networks/
    # NetworksRatsspike.py, ClfOdorRats.py have no dropout (nor batch norm): two seeds give the same training outputs
    mst, resnet, rats = (ARCHITECTURES.get(n) for n in ("mnist_svhn_text", "polymnist_resnet", "rat_mlp"))
    poly, rat = Modality("m0", (3, 28, 28)), Modality("rat", (46, 10))
    torch.manual_seed(0)
    digits = [(Modality("mnist", (1, 28, 28)), torch.rand(4, 1, 28, 28)),
              (Modality("svhn", (3, 32, 32)), torch.rand(4, 3, 32, 32)),
              (Modality("text", (8, 71), kind="text"), F.one_hot(torch.randint(0, 71, (4, 8)), 71).float())]
    nets = [(mst.encoder(m, 2), x) for m, x in digits] + [(mst.decoder(m, 2), torch.randn(4, 2)) for m, _ in digits]
    nets += [(resnet.encoder(poly, 2), torch.rand(1, 3, 28, 28)), (resnet.decoder(poly, 2), torch.randn(1, 2)),
             (ARCHITECTURES.get("polymnist_resnet_clf").classifier(poly, 10), torch.rand(1, 3, 28, 28)),
             (rats.encoder(rat, 2), torch.randn(4, 46, 10)), (rats.decoder(rat, 2), torch.randn(4, 2)),
             (ARCHITECTURES.get("rat_clf").classifier(rat, 4), torch.randn(4, 46, 10))]
    with torch.no_grad():
        for net, x in nets:
            outs = []
            for seed in (0, 1):
                torch.manual_seed(seed)
                out = net.train()(x)
                outs.append(out if isinstance(out, tuple) else (out,))
            assert all(torch.equal(a, b) for a, b in zip(*outs)), type(net).__name__


@pytest.mark.parametrize("name", ["celeba_resnet", "celeba_mmvm", "celeba_clf", "mnist_svhn_text_clf"])
def test_batch_norms_keep_pytorchs_defaults(name):
    # MoPoE celeba/networks/ResidualBlocks.py, FeatureExtractor{Img,Text}.py, DataGenerator{Img,Text}.py (mmvmvae
    # networks/ likewise) and mnistsvhntext/networks/ConvNetworkImgClfSVHN.py: nn.BatchNorm{1,2}d(channels), i.e.
    # eps 1e-5, momentum 0.1, affine, running statistics (train-mode updates, which eval-mode comparisons do not see)
    arch = ARCHITECTURES.get(name)
    mods = ([Modality("svhn", (3, 32, 32))] if name == "mnist_svhn_text_clf" else
            [Modality("img", (3, 64, 64)), Modality("text", (256, 71), kind="text")])
    with torch.device("meta"):
        nets = ([arch.classifier(m, 10) for m in mods] if "clf" in name else
                [f(m, 8) for m in mods for f in (arch.encoder, arch.decoder)])
    bns = [m for net in nets for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == {"celeba_resnet": 60, "celeba_mmvm": 60, "celeba_clf": 30, "mnist_svhn_text_clf": 4}[name]
    assert {(m.eps, m.momentum, m.affine, m.track_running_stats) for m in bns} == {(1e-5, 0.1, True, True)}
