//! The operations of the graph IR, with every attribute and shape argument resolved.
//!
//! Arguments that ONNX passes as inputs but that decide shapes (Reshape's shape,
//! Slice's starts, Pad's pads, Reduce's axes, ...) are folded into the op on import,
//! so a node's inputs are only the tensors it computes on. Axes are non-negative.

use super::DataType;

/// An elementwise function of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Unary {
    /// |x|
    Abs,
    /// -x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1/x
    Reciprocal,
    /// The error function.
    Erf,
    /// tanh x
    Tanh,
    /// 1/(1+e^-x)
    Sigmoid,
    /// max(x, 0)
    Relu,
    /// x if x ≥ 0 else alpha·x
    LeakyRelu(f64),
    /// x·Φ(x); `tanh` selects the tanh approximation.
    Gelu {
        /// Use the tanh approximation.
        tanh: bool,
    },
    /// max(0, min(1, alpha·x + beta))
    HardSigmoid {
        /// Slope.
        alpha: f64,
        /// Offset.
        beta: f64,
    },
    /// x·HardSigmoid(x) with alpha 1/6, beta 1/2.
    HardSwish,
    /// ⌊x⌋
    Floor,
    /// ⌈x⌉
    Ceil,
    /// Round half to even.
    Round,
    /// -1, 0 or 1.
    Sign,
    /// sin x
    Sin,
    /// cos x
    Cos,
    /// tan x
    Tan,
    /// asin x
    Asin,
    /// acos x
    Acos,
    /// atan x
    Atan,
    /// sinh x
    Sinh,
    /// cosh x
    Cosh,
    /// asinh x
    Asinh,
    /// acosh x
    Acosh,
    /// atanh x
    Atanh,
    /// ln(1+e^x)
    Softplus,
    /// x/(1+|x|)
    Softsign,
    /// x if x > 0 else alpha·(e^x − 1)
    Elu(f64),
    /// gamma·(x if x > 0 else alpha·(e^x − 1))
    Selu {
        /// alpha
        alpha: f64,
        /// gamma
        gamma: f64,
    },
    /// max(0,x) + min(0, alpha·(e^(x/alpha) − 1))
    Celu(f64),
    /// x if x > alpha else 0
    ThresholdedRelu(f64),
    /// x·tanh(softplus(x))
    Mish,
    /// x·sigmoid(alpha·x)
    Swish(f64),
    /// Logical not (bool).
    Not,
    /// Bitwise not (integers).
    BitwiseNot,
    /// x is NaN (bool output).
    IsNaN,
    /// x is an infinity of a selected sign (bool output).
    IsInf {
        /// Detect +∞.
        positive: bool,
        /// Detect −∞.
        negative: bool,
    },
    /// x−bias if x > lambd, x+bias if x < −lambd, else 0.
    Shrink {
        /// bias
        bias: f64,
        /// lambd
        lambd: f64,
    },
    /// x·s (made by the importer for `Mean`).
    Scale(f64),
    /// min(max(x, min), max).
    Clip {
        /// Lower bound (−∞ for none).
        min: f64,
        /// Upper bound (+∞ for none).
        max: f64,
    },
}

/// An elementwise function of two tensors, with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b (integers truncate toward zero)
    Div,
    /// a^b
    Pow,
    /// Remainder: `fmod` takes the dividend's sign (C fmod), else the divisor's (Python %).
    Mod {
        /// C fmod semantics.
        fmod: bool,
    },
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// Logical and.
    And,
    /// Logical or.
    Or,
    /// Logical xor.
    Xor,
    /// a == b
    Equal,
    /// a < b
    Less,
    /// a > b
    Greater,
    /// a ≤ b
    LessOrEqual,
    /// a ≥ b
    GreaterOrEqual,
    /// a if a ≥ 0 else slope·a (b is the slope)
    PRelu,
    /// a << b
    ShiftLeft,
    /// a >> b
    ShiftRight,
    /// a & b
    BitwiseAnd,
    /// a | b
    BitwiseOr,
    /// a ^ b
    BitwiseXor,
}

impl Binary {
    /// True when the result is a bool whatever the operand type.
    pub fn is_comparison(self) -> bool {
        matches!(self, Binary::Equal | Binary::Less | Binary::Greater | Binary::LessOrEqual | Binary::GreaterOrEqual)
    }
}

/// Kinds of pooling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolKind {
    /// Maximum.
    Max,
    /// Mean; `count_include_pad` divides by the full window, padding included.
    Average {
        /// Count padded positions in the divisor.
        count_include_pad: bool,
    },
    /// Lp norm over the window.
    Lp(f64),
}

/// A sliding window over the spatial axes (axes 2.. of an NC... tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Window extent per spatial axis.
    pub kernel: Vec<usize>,
    /// Step per spatial axis.
    pub strides: Vec<usize>,
    /// Padding (begin, end) per spatial axis, resolved from `auto_pad`.
    pub pads: Vec<(usize, usize)>,
    /// Dilation per spatial axis.
    pub dilations: Vec<usize>,
}

/// Convolution (`Conv`): input N×C×spatial, weight M×(C/group)×kernel, optional bias M.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// The window.
    pub window: Window,
    /// Channel groups.
    pub group: usize,
    /// An activation applied after the bias (set by [`crate::passes::fuse_conv`]).
    pub activation: Option<Unary>,
}

/// Transposed convolution: weight C×(M/group)×kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTranspose {
    /// The window (pads are those removed from the full output).
    pub window: Window,
    /// Channel groups.
    pub group: usize,
    /// Extra length added at the end of each spatial axis of the output.
    pub output_padding: Vec<usize>,
}

/// Scaled dot-product attention (ONNX `Attention`, opsets 23–24).
///
/// Inputs, in order: Q, K, V, then the optional ones this op has: the additive or
/// boolean mask, the past key and value, the non-padded KV lengths. Q, K and V are
/// `B×S×(H·d)` when `packed`, else `B×H×S×d`; past and present keys/values are
/// always `B×H_kv×T×d`. Outputs: Y, then (when `outputs ≥ 3`) the present key and
/// value, then (when `outputs = 4`) the attention scores selected by `qk_output`.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads (query heads are grouped onto them).
    pub kv_heads: usize,
    /// 3-D inputs with heads packed into the last axis.
    pub packed: bool,
    /// Multiplies Q·Kᵀ.
    pub scale: f64,
    /// Mask keys after each query's position (offset by the past length).
    pub causal: bool,
    /// Scores become `softcap·tanh(score/softcap)` when positive.
    pub softcap: f64,
    /// An `attn_mask` input is present.
    pub has_mask: bool,
    /// `past_key` and `past_value` inputs are present.
    pub has_past: bool,
    /// A `nonpad_kv_seqlen` input is present.
    pub has_nonpad: bool,
    /// Number of outputs (1, 3 or 4).
    pub outputs: usize,
    /// What the fourth output holds: 0 scaled scores (soft-capped), 1 the same, 2 with
    /// the mask added, 3 after the softmax.
    pub qk_output: i64,
}

/// How a scatter combines an update with the existing value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScatterReduction {
    /// Replace.
    None,
    /// Add.
    Add,
    /// Multiply.
    Mul,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

/// How a loss combines per-element values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReduction {
    /// Per element (the target's shape).
    None,
    /// Sum.
    Sum,
    /// Weighted mean.
    Mean,
}

/// Pooling over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// What is computed over each window.
    pub kind: PoolKind,
    /// The window.
    pub window: Window,
    /// Round the output length up (a last, partial window is kept).
    pub ceil_mode: bool,
    /// MaxPool's second output: flat indices into the input.
    pub with_indices: bool,
    /// Indices count the spatial axes column-major (`storage_order = 1`).
    pub column_major: bool,
}

/// Which softmax-like function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxKind {
    /// exp(x)/Σexp
    Softmax,
    /// log of softmax
    LogSoftmax,
    /// one-hot of the first maximum
    Hardmax,
}

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    /// Σx
    Sum,
    /// mean
    Mean,
    /// max
    Max,
    /// min
    Min,
    /// Πx
    Prod,
    /// Σ|x|
    L1,
    /// √Σx²
    L2,
    /// ln Σx
    LogSum,
    /// ln Σe^x
    LogSumExp,
    /// Σx²
    SumSquare,
}

/// Resize interpolation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeMode {
    /// Nearest neighbour with the given rounding of the source coordinate.
    Nearest(NearestRounding),
    /// (Multi-)linear interpolation.
    Linear,
    /// Cubic convolution with coefficient `a` (−0.75 in ONNX, −0.5 in some exporters).
    Cubic {
        /// The cubic coefficient.
        a: f64,
    },
}

/// How `Resize` nearest mode rounds a source coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestRounding {
    /// Round, halves down.
    RoundPreferFloor,
    /// Round, halves up.
    RoundPreferCeil,
    /// ⌊x⌋
    Floor,
    /// ⌈x⌉
    Ceil,
}

/// How `Resize` maps an output coordinate to an input coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinateMode {
    /// (x + 0.5)/scale − 0.5
    HalfPixel,
    /// Half-pixel, centred on the input.
    HalfPixelSymmetric,
    /// Half-pixel, 0 when the output length is 1.
    PytorchHalfPixel,
    /// x·(in−1)/(out−1)
    AlignCorners,
    /// x/scale
    Asymmetric,
    /// Crop by the region of interest, then align corners.
    TfCropAndResize,
}

/// `Resize` (and `Upsample`) with its output shape in the output's type.
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    /// Output shape.
    pub sizes: Vec<usize>,
    /// Interpolation.
    pub mode: ResizeMode,
    /// Coordinate transform.
    pub coordinate: CoordinateMode,
    /// Scale per axis (output/input unless given explicitly).
    pub scales: Vec<f64>,
    /// Region of interest per axis (start, end), normalized; used by `TfCropAndResize`.
    pub roi: Vec<(f64, f64)>,
    /// Value for samples outside the input (`TfCropAndResize`).
    pub extrapolation_value: f64,
    /// Give zero weight to taps outside the input (and renormalize).
    pub exclude_outside: bool,
    /// Widen the linear/cubic kernel by 1/scale when downsampling.
    pub antialias: bool,
}

/// `Pad` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// Fill with a constant.
    Constant,
    /// Mirror without repeating the edge.
    Reflect,
    /// Repeat the edge.
    Edge,
    /// Wrap around.
    Wrap,
}

/// One axis of a `Slice`: elements `start, start+step, ...` (`len` of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceAxis {
    /// Axis.
    pub axis: usize,
    /// First index (in range when `len > 0`).
    pub start: i64,
    /// Step (non-zero).
    pub step: i64,
    /// Number of elements taken.
    pub len: usize,
}

/// An operand of a fused elementwise step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedArg {
    /// The node's input `i`.
    Input(usize),
    /// The result of step `i`.
    Step(usize),
}

/// One step of a fused elementwise chain; its result is rounded to `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub enum FusedStep {
    /// A unary function.
    Unary(Unary, FusedArg, DataType),
    /// A binary function (broadcasting to the node's output shape).
    Binary(Binary, FusedArg, FusedArg, DataType),
}

/// An operation of the graph IR.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Elementwise function of one input.
    Unary(Unary),
    /// Elementwise function of two inputs (broadcasting).
    Binary(Binary),
    /// `Where(cond, a, b)` (broadcasting).
    Where,
    /// Element type conversion; `saturate` decides fp8 overflow (see
    /// [`DataType::round_float_with`]).
    Cast {
        /// Target type.
        to: DataType,
        /// Saturate out-of-range values to the fp8 maximum.
        saturate: bool,
    },
    /// Matrix product with numpy batching (`MatMul`).
    MatMul,
    /// `alpha·op(A)·op(B) + beta·C` with 2-D A and B; C optional, broadcast.
    Gemm {
        /// Scale of the product.
        alpha: f64,
        /// Scale of C.
        beta: f64,
        /// Transpose A.
        trans_a: bool,
        /// Transpose B.
        trans_b: bool,
    },
    /// Convolution; inputs X, W and optionally B.
    Conv(Conv),
    /// Transposed convolution; inputs X, W and optionally B.
    ConvTranspose(ConvTranspose),
    /// Windowed pooling.
    Pool(Pool),
    /// Pooling over all spatial axes.
    GlobalPool(PoolKind),
    /// Batch normalization; inputs X, scale, bias, mean, var. In training mode
    /// (`momentum` given) it normalizes with the batch statistics and also outputs the
    /// updated running mean and variance.
    BatchNorm {
        /// Added to the variance.
        epsilon: f64,
        /// Training mode: running = running·momentum + batch·(1 − momentum).
        momentum: Option<f64>,
    },
    /// Normalization over axes `axis..`; inputs X, scale, optional bias; outputs Y
    /// and optionally mean and 1/σ.
    LayerNorm {
        /// First normalized axis.
        axis: usize,
        /// Added to the variance.
        epsilon: f64,
        /// Element type of the mean and 1/σ outputs (`stash_type`).
        stats_dtype: DataType,
    },
    /// Per-instance, per-channel normalization; inputs X, scale, bias.
    InstanceNorm {
        /// Added to the variance.
        epsilon: f64,
    },
    /// Normalization over channel groups; inputs X, scale, bias (per channel).
    GroupNorm {
        /// Number of groups.
        groups: usize,
        /// Added to the variance.
        epsilon: f64,
    },
    /// Root-mean-square normalization over axes `axis..`; inputs X, scale.
    RmsNorm {
        /// First normalized axis.
        axis: usize,
        /// Added to the mean square.
        epsilon: f64,
    },
    /// Local response normalization across channels.
    Lrn {
        /// Channels in the window.
        size: usize,
        /// alpha
        alpha: f64,
        /// beta
        beta: f64,
        /// bias
        bias: f64,
    },
    /// x / ‖x‖p along an axis.
    LpNorm {
        /// Axis.
        axis: usize,
        /// 1 or 2.
        p: i64,
    },
    /// (x − mean)/σ over the given axes.
    MeanVarianceNorm {
        /// Axes.
        axes: Vec<usize>,
    },
    /// Softmax-like function along an axis; `coerce_2d` (opsets < 13) works on the
    /// flattened trailing axes `axis..` instead of one axis.
    Softmax {
        /// Which function.
        kind: SoftmaxKind,
        /// Axis.
        axis: usize,
        /// Flatten axes `axis..` into one.
        coerce_2d: bool,
    },
    /// Reduction over `axes` (empty: the op is the identity).
    Reduce {
        /// Which reduction.
        kind: ReduceKind,
        /// Reduced axes, sorted.
        axes: Vec<usize>,
        /// Keep reduced axes with length 1.
        keepdims: bool,
    },
    /// Index of the maximum or minimum along an axis (int64 output).
    ArgReduce {
        /// Maximum (else minimum).
        max: bool,
        /// Axis.
        axis: usize,
        /// Keep the axis with length 1.
        keepdims: bool,
        /// Report the last index among ties.
        last_index: bool,
    },
    /// Cumulative sum (or product) along an axis.
    CumSum {
        /// Multiply instead of add (`CumProd`).
        product: bool,
        /// Axis.
        axis: usize,
        /// Exclude the current element.
        exclusive: bool,
        /// From the end.
        reverse: bool,
    },
    /// Same data under a new shape (`Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`).
    Reshape {
        /// Output shape.
        shape: Vec<usize>,
    },
    /// The input unchanged (`Identity`, inference `Dropout`).
    Identity,
    /// Axis permutation.
    Transpose {
        /// Output axis i is input axis `perm[i]`.
        perm: Vec<usize>,
    },
    /// Concatenation along an axis.
    Concat {
        /// Axis.
        axis: usize,
    },
    /// Split along an axis into pieces of the given lengths.
    Split {
        /// Axis.
        axis: usize,
        /// Length of each output along the axis.
        sizes: Vec<usize>,
    },
    /// Strided slice.
    Slice {
        /// The sliced axes.
        axes: Vec<SliceAxis>,
    },
    /// `Gather`: inputs data and indices.
    Gather {
        /// Axis of data indexed.
        axis: usize,
    },
    /// `GatherElements`: inputs data and indices of the output's shape.
    GatherElements {
        /// Axis.
        axis: usize,
    },
    /// `GatherND`.
    GatherNd {
        /// Leading batch axes.
        batch_dims: usize,
    },
    /// Broadcast with a shape (numpy rules, like `Expand`).
    Expand {
        /// The shape broadcast against the input's.
        shape: Vec<usize>,
    },
    /// Repeat along each axis.
    Tile {
        /// Repetitions per axis.
        repeats: Vec<usize>,
    },
    /// Padding.
    Pad {
        /// How to fill.
        mode: PadMode,
        /// (begin, end) per axis; negative values crop.
        pads: Vec<(i64, i64)>,
        /// Fill value for `Constant` mode.
        value: f64,
    },
    /// Resize.
    Resize(Resize),
    /// Depth to space (`crd`: column-row-depth order, else depth-column-row).
    DepthToSpace {
        /// Block size.
        block: usize,
        /// CRD mode.
        crd: bool,
    },
    /// Space to depth.
    SpaceToDepth {
        /// Block size.
        block: usize,
    },
    /// Upper or lower triangle of the last two axes.
    Trilu {
        /// Keep the upper triangle.
        upper: bool,
        /// Diagonal offset.
        k: i64,
    },
    /// Top-k values and their int64 indices along an axis.
    TopK {
        /// Axis.
        axis: usize,
        /// Count.
        k: usize,
        /// Largest (else smallest).
        largest: bool,
    },
    /// One-hot encoding: inputs indices; `depth`, off and on values resolved.
    OneHot {
        /// Axis of the new dimension in the output.
        axis: usize,
        /// Classes.
        depth: i64,
        /// Value where the index does not match.
        off: f64,
        /// Value where it matches.
        on: f64,
        /// Output element type.
        dtype: DataType,
    },
    /// Writes `updates` into a copy of `data` at `indices` along an axis
    /// (`ScatterElements`); inputs data, indices, updates.
    ScatterElements {
        /// Axis.
        axis: usize,
        /// How an update combines with the value there.
        reduction: ScatterReduction,
    },
    /// Writes slices of `updates` at the index tuples of `indices` (`ScatterND`).
    ScatterNd {
        /// How an update combines with the value there.
        reduction: ScatterReduction,
    },
    /// Reverses the first `lens[b]` steps of every batch entry `b`; inputs x, lens.
    ReverseSequence {
        /// Batch axis (0 or 1).
        batch_axis: usize,
        /// Time axis (the other one).
        time_axis: usize,
    },
    /// Negative log-likelihood loss, over log-probabilities (`NegativeLogLikelihoodLoss`)
    /// or over scores through a log-softmax on axis 1 (`SoftmaxCrossEntropyLoss`);
    /// inputs x (N×C×…), target (N×…), optional weight (C). Outputs the loss and, for
    /// the softmax form when asked, the log-probabilities.
    Loss {
        /// Apply log-softmax to the input first.
        softmax: bool,
        /// How per-element losses are combined.
        reduction: LossReduction,
        /// Targets equal to this contribute nothing.
        ignore_index: Option<i64>,
        /// Also output the log-probabilities.
        with_log_prob: bool,
    },
    /// `QuantizeLinear`: `saturate(round(x / scale) + zero_point)` into `to`; inputs x,
    /// scale, optional zero point. Scales are per tensor, per `axis`, or per block of
    /// `block` elements along `axis`.
    QuantizeLinear {
        /// Quantized axis (per-axis and blocked scales).
        axis: usize,
        /// Block length along `axis` (0: not blocked).
        block: usize,
        /// Output type (integers or fp8).
        to: DataType,
        /// fp8 overflow saturates.
        saturate: bool,
        /// Type the division is computed in (`precision`), else the input's.
        precision: Option<DataType>,
    },
    /// `DequantizeLinear`: `(x − zero_point) · scale` into `to`; inputs x, scale,
    /// optional zero point, laid out as for `QuantizeLinear`.
    DequantizeLinear {
        /// Quantized axis.
        axis: usize,
        /// Block length along `axis` (0: not blocked).
        block: usize,
        /// Output float type.
        to: DataType,
    },
    /// Einstein summation: each input's axes and the output's, as letter numbers.
    Einsum {
        /// Letters of each input's axes.
        inputs: Vec<Vec<usize>>,
        /// Letters of the output's axes.
        output: Vec<usize>,
    },
    /// The same bytes read as another type of the same width (`BitCast`).
    BitCast(DataType),
    /// Scaled dot-product attention.
    Attention(Attention),
    /// Rotary position embedding (ONNX `RotaryEmbedding`); inputs X, cos cache, sin
    /// cache and optionally position ids. X is `B×H×S×d`, or `B×S×(H·d)` with
    /// `num_heads` given.
    RotaryEmbedding {
        /// Rotate interleaved pairs (x0,x1), (x2,x3)… instead of the two halves.
        interleaved: bool,
        /// Heads of a 3-D input.
        num_heads: Option<usize>,
        /// Leading elements of each head that rotate (the rest pass through).
        rotary_dim: usize,
        /// A position-id input selects the cache rows.
        has_position_ids: bool,
    },
    /// A chain of elementwise steps made by the fusion pass; the result is the last step's.
    FusedElementwise(Vec<FusedStep>),
    /// MatMul + bias (+ activation) made by the fusion pass; inputs A, B, bias.
    FusedMatMul {
        /// Activation applied after the bias.
        activation: Option<Unary>,
    },
}

impl Op {
    /// True for elementwise ops (one output, same shape as the broadcast inputs).
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::FusedElementwise(_))
    }
}
