//! The op registry: one entry per ONNX op type, with the opset versions at which its
//! definition changed (from the ONNX operator changelog) and the parser that turns a
//! node of any of those versions into an IR op. Each family lives in its own file.

mod attention;
mod elementwise;
mod misc;
mod nn;
mod reduce;
mod scatter;
mod shape;

use super::ctx::{Ctx, PResult, Parsed};

/// A supported ONNX op.
pub(crate) struct OpDef {
    /// ONNX op type.
    pub name: &'static str,
    /// Versions at which the op's definition changed; the parser handles each.
    pub versions: &'static [i64],
    /// Translation of a node.
    pub parse: fn(&Ctx) -> PResult<Parsed>,
}

macro_rules! registry {
    ($($name:literal [$($v:literal),*] => $f:path,)*) => {
        static OPS: &[OpDef] = &[$(OpDef { name: $name, versions: &[$($v),*], parse: $f },)*];
    };
}

registry! {
    // elementwise.rs
    "Abs" [1, 6, 13] => elementwise::abs,
    "Neg" [1, 6, 13] => elementwise::neg,
    "Exp" [1, 6, 13] => elementwise::exp,
    "Log" [1, 6, 13] => elementwise::log,
    "Sqrt" [1, 6, 13] => elementwise::sqrt,
    "Reciprocal" [1, 6, 13] => elementwise::reciprocal,
    "Erf" [9, 13] => elementwise::erf,
    "Tanh" [1, 6, 13] => elementwise::tanh,
    "Sigmoid" [1, 6, 13] => elementwise::sigmoid,
    "Relu" [1, 6, 13, 14] => elementwise::relu,
    "LeakyRelu" [1, 6, 16] => elementwise::leaky_relu,
    "Gelu" [20] => elementwise::gelu,
    "HardSigmoid" [1, 6, 22] => elementwise::hard_sigmoid,
    "HardSwish" [14, 22] => elementwise::hard_swish,
    "Floor" [1, 6, 13] => elementwise::floor,
    "Ceil" [1, 6, 13] => elementwise::ceil,
    "Round" [11, 22] => elementwise::round,
    "Sign" [9, 13] => elementwise::sign,
    "Sin" [7, 22] => elementwise::sin,
    "Cos" [7, 22] => elementwise::cos,
    "Tan" [7, 22] => elementwise::tan,
    "Asin" [7, 22] => elementwise::asin,
    "Acos" [7, 22] => elementwise::acos,
    "Atan" [7, 22] => elementwise::atan,
    "Sinh" [9, 22] => elementwise::sinh,
    "Cosh" [9, 22] => elementwise::cosh,
    "Asinh" [9, 22] => elementwise::asinh,
    "Acosh" [9, 22] => elementwise::acosh,
    "Atanh" [9, 22] => elementwise::atanh,
    "Softplus" [1, 22] => elementwise::softplus,
    "Softsign" [1, 22] => elementwise::softsign,
    "Elu" [1, 6, 22] => elementwise::elu,
    "Selu" [1, 6, 22] => elementwise::selu,
    "Celu" [12] => elementwise::celu,
    "ThresholdedRelu" [10, 22] => elementwise::thresholded_relu,
    "Mish" [18, 22] => elementwise::mish,
    "Swish" [24] => elementwise::swish,
    "Not" [1] => elementwise::not,
    "BitwiseNot" [18] => elementwise::bitwise_not,
    "IsNaN" [9, 13, 20] => elementwise::is_nan,
    "IsInf" [10, 20] => elementwise::is_inf,
    "Shrink" [9] => elementwise::shrink,
    "Clip" [1, 6, 11, 12, 13] => elementwise::clip,
    "Add" [1, 6, 7, 13, 14] => elementwise::add,
    "Sub" [1, 6, 7, 13, 14] => elementwise::sub,
    "Mul" [1, 6, 7, 13, 14] => elementwise::mul,
    "Div" [1, 6, 7, 13, 14] => elementwise::div,
    "Pow" [1, 7, 12, 13, 15] => elementwise::pow,
    "Mod" [10, 13] => elementwise::modulo,
    "And" [1, 7] => elementwise::and,
    "Or" [1, 7] => elementwise::or,
    "Xor" [1, 7] => elementwise::xor,
    "Equal" [1, 7, 11, 13, 19] => elementwise::equal,
    "Less" [1, 7, 9, 13] => elementwise::less,
    "Greater" [1, 7, 9, 13] => elementwise::greater,
    "LessOrEqual" [12, 16] => elementwise::less_or_equal,
    "GreaterOrEqual" [12, 16] => elementwise::greater_or_equal,
    "PRelu" [1, 6, 7, 9, 16] => elementwise::prelu,
    "BitShift" [11] => elementwise::bit_shift,
    "BitwiseAnd" [18] => elementwise::bitwise_and,
    "BitwiseOr" [18] => elementwise::bitwise_or,
    "BitwiseXor" [18] => elementwise::bitwise_xor,
    "Sum" [1, 6, 8, 13] => elementwise::sum,
    "Max" [1, 6, 8, 12, 13] => elementwise::max,
    "Min" [1, 6, 8, 12, 13] => elementwise::min,
    "Mean" [1, 6, 8, 13] => elementwise::mean,
    "Where" [9, 16] => elementwise::where_,
    "Cast" [1, 6, 9, 13, 19, 21, 23, 24, 25] => elementwise::cast,
    "CastLike" [15, 19, 21, 23, 24, 25] => elementwise::cast_like,
    "Identity" [1, 13, 14, 16, 19, 21, 23, 24, 25] => elementwise::identity,
    "Dropout" [1, 6, 7, 10, 12, 13, 22] => elementwise::dropout,
    // nn.rs
    "MatMul" [1, 9, 13] => nn::matmul,
    "Gemm" [1, 6, 7, 9, 11, 13] => nn::gemm,
    "Conv" [1, 11, 22] => nn::conv,
    "ConvTranspose" [1, 11, 22] => nn::conv_transpose,
    "MaxPool" [1, 8, 10, 11, 12, 22] => nn::max_pool,
    "AveragePool" [1, 7, 10, 11, 19, 22] => nn::average_pool,
    "LpPool" [1, 2, 11, 18, 22] => nn::lp_pool,
    "GlobalAveragePool" [1, 22] => nn::global_average_pool,
    "GlobalMaxPool" [1, 22] => nn::global_max_pool,
    "GlobalLpPool" [1, 2, 22] => nn::global_lp_pool,
    "BatchNormalization" [1, 6, 7, 9, 14, 15] => nn::batch_norm,
    "LayerNormalization" [17] => nn::layer_norm,
    "InstanceNormalization" [1, 6, 22] => nn::instance_norm,
    "GroupNormalization" [18, 21] => nn::group_norm,
    "RMSNormalization" [23] => nn::rms_norm,
    "LRN" [1, 13] => nn::lrn,
    "LpNormalization" [1, 22] => nn::lp_norm,
    "MeanVarianceNormalization" [9, 13] => nn::mean_variance_norm,
    "Softmax" [1, 11, 13] => nn::softmax,
    "LogSoftmax" [1, 11, 13] => nn::log_softmax,
    "Hardmax" [1, 11, 13] => nn::hardmax,
    // reduce.rs
    "ReduceMean" [1, 11, 13, 18] => reduce::mean,
    "ReduceSum" [1, 11, 13] => reduce::sum,
    "ReduceMax" [1, 11, 12, 13, 18, 20] => reduce::max,
    "ReduceMin" [1, 11, 12, 13, 18, 20] => reduce::min,
    "ReduceProd" [1, 11, 13, 18] => reduce::prod,
    "ReduceL1" [1, 11, 13, 18] => reduce::l1,
    "ReduceL2" [1, 11, 13, 18] => reduce::l2,
    "ReduceLogSum" [1, 11, 13, 18] => reduce::log_sum,
    "ReduceLogSumExp" [1, 11, 13, 18] => reduce::log_sum_exp,
    "ReduceSumSquare" [1, 11, 13, 18] => reduce::sum_square,
    "ArgMax" [1, 11, 12, 13] => reduce::arg_max,
    "ArgMin" [1, 11, 12, 13] => reduce::arg_min,
    "CumSum" [11, 14] => reduce::cum_sum,
    "CumProd" [26] => reduce::cum_prod,
    "TopK" [1, 10, 11, 24] => reduce::top_k,
    // shape.rs
    "Reshape" [1, 5, 13, 14, 19, 21, 23, 24, 25] => shape::reshape,
    "Flatten" [1, 9, 11, 13, 21, 23, 24, 25] => shape::flatten,
    "Squeeze" [1, 11, 13, 21, 23, 24, 25] => shape::squeeze,
    "Unsqueeze" [1, 11, 13, 21, 23, 24, 25] => shape::unsqueeze,
    "Transpose" [1, 13, 21, 23, 24, 25] => shape::transpose,
    "Concat" [1, 4, 11, 13] => shape::concat,
    "Split" [1, 2, 11, 13, 18] => shape::split,
    "Slice" [1, 10, 11, 13] => shape::slice,
    "Gather" [1, 11, 13] => shape::gather,
    "GatherElements" [11, 13] => shape::gather_elements,
    "GatherND" [11, 12, 13] => shape::gather_nd,
    "Expand" [8, 13] => shape::expand,
    "Tile" [1, 6, 13] => shape::tile,
    "Shape" [1, 13, 15, 19, 21, 23, 24, 25] => shape::shape,
    "Size" [1, 13, 19, 21, 23, 24, 25] => shape::size,
    "Constant" [1, 9, 11, 12, 13, 19, 21, 23, 24, 25] => shape::constant,
    "ConstantOfShape" [9, 20, 21, 23, 24, 25] => shape::constant_of_shape,
    "Range" [11, 27] => shape::range,
    "EyeLike" [9, 22] => shape::eye_like,
    "Pad" [1, 2, 11, 13, 18, 19, 21, 23, 24, 25] => shape::pad,
    "Resize" [10, 11, 13, 18, 19] => shape::resize,
    "Upsample" [7, 9] => shape::upsample,
    "DepthToSpace" [1, 11, 13] => shape::depth_to_space,
    "SpaceToDepth" [1, 13] => shape::space_to_depth,
    "Trilu" [14] => shape::trilu,
    "OneHot" [9, 11] => shape::one_hot,
    // attention.rs
    "Attention" [23, 24] => attention::attention,
    "RotaryEmbedding" [23] => attention::rotary_embedding,
    // misc.rs
    "QuantizeLinear" [10, 13, 19, 21, 23, 24, 25] => misc::quantize_linear,
    "DequantizeLinear" [10, 13, 19, 21, 23, 24, 25] => misc::dequantize_linear,
    "Einsum" [12] => misc::einsum,
    "BitCast" [26] => misc::bit_cast,
    "HannWindow" [17] => misc::hann_window,
    "HammingWindow" [17] => misc::hamming_window,
    "BlackmanWindow" [17] => misc::blackman_window,
    // scatter.rs
    "ScatterElements" [11, 13, 16, 18] => scatter::scatter_elements,
    "Scatter" [9, 11] => scatter::scatter_elements,
    "ScatterND" [11, 13, 16, 18] => scatter::scatter_nd,
    "ReverseSequence" [10] => scatter::reverse_sequence,
    "CenterCropPad" [18] => scatter::center_crop_pad,
    "NegativeLogLikelihoodLoss" [12, 13, 22] => scatter::nll_loss,
    "SoftmaxCrossEntropyLoss" [12, 13] => scatter::softmax_cross_entropy,
}

/// The op types the importer supports, sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = OPS.iter().map(|d| d.name).collect();
    v.sort_unstable();
    v
}

pub(crate) fn lookup(op_type: &str) -> Option<&'static OpDef> {
    OPS.iter().find(|d| d.name == op_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_well_formed() {
        let names = supported_ops();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(names, dedup, "an op is registered twice");
        for d in OPS {
            assert!(d.versions.windows(2).all(|w| w[0] < w[1]), "{} versions unsorted", d.name);
        }
        // The required set.
        for op in [
            "MatMul",
            "Gemm",
            "Conv",
            "ConvTranspose",
            "MaxPool",
            "AveragePool",
            "GlobalAveragePool",
            "BatchNormalization",
            "LayerNormalization",
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Pow",
            "Sqrt",
            "Reciprocal",
            "Neg",
            "Abs",
            "Exp",
            "Log",
            "Erf",
            "Tanh",
            "Sigmoid",
            "Relu",
            "LeakyRelu",
            "Gelu",
            "HardSigmoid",
            "HardSwish",
            "Softmax",
            "LogSoftmax",
            "ReduceMean",
            "ReduceSum",
            "ReduceMax",
            "ReduceMin",
            "ArgMax",
            "Reshape",
            "Flatten",
            "Transpose",
            "Concat",
            "Split",
            "Slice",
            "Gather",
            "Squeeze",
            "Unsqueeze",
            "Expand",
            "Where",
            "Equal",
            "Less",
            "Greater",
            "Cast",
            "Constant",
            "ConstantOfShape",
            "Shape",
            "Range",
            "Identity",
            "Clip",
            "Pad",
            "Resize",
            "LRN",
            "Dropout",
            "Sum",
        ] {
            assert!(lookup(op).is_some(), "{op} is not registered");
        }
    }
}
