//! The adapter as a model: parameter budget (spec section 11), the zero-init identity, batches
//! mixing tasks, gradients for training, the Kronecker option, and input errors.

use crate::common;
use common::max_diff;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use mvserve::adapter::{
    clip_param_count, pool_frames, AdapterConfig, AdapterInit, BackboneDims, MixedHook,
    TaskAdapter, Tying,
};
use mvserve::backbone::{Backbone, BlockHook, ClipConfig};
use mvserve::simd;

use common::tiny_backbone as tiny;

fn tiny_config(b: &Backbone, tying: Tying) -> AdapterConfig {
    AdapterConfig::standard(BackboneDims::of(&b.clip.config), 4, 32, tying)
}

fn vit_b_32(tying: Tying) -> AdapterConfig {
    AdapterConfig::standard(BackboneDims::of(&ClipConfig::vit_b_32()), 12, 32, tying)
}

/// Counts the parameters a VarMap-built adapter really has (the shared factor is one Var).
fn built_params(c: &AdapterConfig) -> usize {
    let (_, vm) = TaskAdapter::trainable(c, AdapterInit::Authors, None, &Device::Cpu).unwrap();
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[test]
fn vit_b_32_parameter_budget() {
    let down_in = vit_b_32(Tying::DownIn);
    let down_out = vit_b_32(Tying::DownOut);
    assert_eq!(down_in.tied_layers, vec![10, 11]);
    assert_eq!(down_in.param_count(), 3_401_728);
    assert_eq!(down_out.param_count(), 3_325_696);
    assert_eq!(built_params(&down_in), 3_401_728);
    assert_eq!(built_params(&down_out), 3_325_696);
    let clip = clip_param_count(&ClipConfig::vit_b_32());
    assert_eq!(clip, 151_277_313);
    let pct = 100.0 * down_in.param_count() as f64 / clip as f64;
    assert!((pct - 2.25).abs() < 0.005, "{pct}");
    // Per-layer pieces of the spec: no tying = 12 x (158,160 + 118,272).
    assert_eq!(
        vit_b_32(Tying::None).param_count(),
        12 * (158_160 + 118_272)
    );
    // Without temporal calibration a video adapter loses g, a and b (7,248 each).
    let mut no_t = vit_b_32(Tying::None);
    no_t.temporal = false;
    assert_eq!(no_t.param_count(), 12 * (158_160 - 7_248 + 118_272));
    // Down/up only (no cross-frame part): a video adapter is W_down, b_down, W_up, b_up.
    no_t.video_trm = false;
    assert_eq!(
        no_t.param_count(),
        12 * ((64 * 768 + 64) + (768 * 64 + 768) + 118_272)
    );
    assert_eq!(no_t.param_count(), built_params(&no_t));
    let mut no_trm = vit_b_32(Tying::DownIn);
    no_trm.temporal = false;
    no_trm.video_trm = false;
    assert_eq!(no_trm.param_count(), built_params(&no_trm));
    let kron = vit_b_32(Tying::Kronecker);
    assert_eq!(kron.param_count(), built_params(&kron));
}

#[test]
fn expected_tensor_names_match_what_is_built() {
    for (tying, cross_frame) in [
        (Tying::DownIn, true),
        (Tying::DownOut, true),
        (Tying::Kronecker, true),
        (Tying::None, true),
        (Tying::DownIn, false),
    ] {
        let mut c = vit_b_32(tying);
        c.temporal = cross_frame;
        c.video_trm = cross_frame;
        let names = TaskAdapter::expected_tensors(&c).unwrap();
        if !cross_frame {
            let video: Vec<&String> = names.keys().filter(|n| n.starts_with("vision.")).collect();
            assert!(
                video
                    .iter()
                    .all(|n| n.contains(".down.") || n.contains(".up.") || n.contains(".cmt.")),
                "{video:?}"
            );
        }
        let (_, vm) = TaskAdapter::trainable(&c, AdapterInit::Authors, None, &Device::Cpu).unwrap();
        let data = vm.data().lock().unwrap();
        assert_eq!(names.len(), data.len(), "{tying:?}");
        for (n, shape) in &names {
            assert_eq!(data[n].dims(), shape.as_slice(), "{n}");
        }
        let total: usize = names.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(total, c.param_count(), "{tying:?}");
    }
}

/// A video batch of 2 videos x 4 frames (the second with a padded frame) and 3 texts.
fn inputs(b: &Backbone) -> (Tensor, Tensor, Tensor, Tensor) {
    let s = b.clip.config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (8, 3, s, s), &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 1., 0.]], &Device::Cpu).unwrap();
    let (ids, eot) = b
        .tokenize_batch(
            &[
                "a dog runs left",
                "a car turns right at night",
                "two people talk",
            ],
            32,
        )
        .unwrap();
    (pixels, mask, ids, eot)
}

#[test]
fn a_fresh_adapter_is_plain_clip() {
    let b = tiny();
    let (pixels, mask, ids, eot) = inputs(&b);
    for tying in [Tying::DownIn, Tying::DownOut, Tying::Kronecker, Tying::None] {
        let c = tiny_config(&b, tying);
        // Inference tensors: exactly plain CLIP (the up-projection's output is exactly zero) run
        // in full; a plain embedding pass runs the last block for CLS/EOT only, equal to rounding.
        let t = TaskAdapter::init_tensors(&c, AdapterInit::Authors, &Device::Cpu).unwrap();
        let a = TaskAdapter::from_tensors(&c, t, &Device::Cpu).unwrap();
        let plain = b.clip.vision.forward(&pixels, None, true).unwrap().embeds;
        let picked = b.clip.vision.forward(&pixels, None, false).unwrap().embeds;
        let hook = a.video_hook(&mask).unwrap();
        let adapted = b
            .clip
            .vision
            .forward(&pixels, Some(&hook), false)
            .unwrap()
            .embeds;
        assert_eq!(max_diff(&plain, &adapted), 0.0, "{tying:?} video");
        assert!(
            max_diff(&picked, &adapted) < 1e-5,
            "{tying:?} video, CLS only"
        );
        let plain = b.clip.text.forward(&ids, &eot, None, true).unwrap().embeds;
        let picked = b.clip.text.forward(&ids, &eot, None, false).unwrap().embeds;
        let th = a.text_hook(32).unwrap();
        let adapted = b
            .clip
            .text
            .forward(&ids, &eot, Some(&th), false)
            .unwrap()
            .embeds;
        assert_eq!(max_diff(&plain, &adapted), 0.0, "{tying:?} text");
        assert!(
            max_diff(&picked, &adapted) < 1e-5,
            "{tying:?} text, EOT only"
        );
        // Trainable Vars switch the backbone to its differentiable kernels: equal to rounding.
        let (a, _) = TaskAdapter::trainable(&c, AdapterInit::Authors, None, &Device::Cpu).unwrap();
        let hook = a.video_hook(&mask).unwrap();
        let adapted = b
            .clip
            .vision
            .forward(&pixels, Some(&hook), false)
            .unwrap()
            .embeds;
        let plain = b.clip.vision.forward(&pixels, None, false).unwrap().embeds;
        assert!(max_diff(&plain, &adapted) < 1e-5, "{tying:?} trainable");
    }
    // And a random one is not (the test can fail).
    let c = tiny_config(&b, Tying::DownIn);
    let (a, _) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    let plain = b.clip.vision.forward(&pixels, None, false).unwrap().embeds;
    let hook = a.video_hook(&mask).unwrap();
    let adapted = b
        .clip
        .vision
        .forward(&pixels, Some(&hook), false)
        .unwrap()
        .embeds;
    assert!(max_diff(&plain, &adapted) > 1e-3);
}

#[test]
fn a_mixed_batch_equals_separate_runs() {
    let b = tiny();
    let (pixels, mask, ids, eot) = inputs(&b);
    let c = tiny_config(&b, Tying::DownIn);
    let (t1, _) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    let (t2, _) = TaskAdapter::trainable(
        &tiny_config(&b, Tying::DownOut),
        AdapterInit::Random,
        None,
        &Device::Cpu,
    )
    .unwrap();
    // Video: rows 0..4 are task 1's video, 4..8 task 2's; then both again with plain CLIP rows.
    let m1 = mask.narrow(0, 0, 1).unwrap();
    let m2 = mask.narrow(0, 1, 1).unwrap();
    let (h1, h2) = (t1.video_hook(&m1).unwrap(), t2.video_hook(&m2).unwrap());
    let all = Tensor::cat(&[&pixels, &pixels.narrow(0, 0, 4).unwrap()], 0).unwrap();
    let mixed = MixedHook::new(vec![
        (0..4, Some(&h1 as &dyn BlockHook)),
        (4..8, Some(&h2 as &dyn BlockHook)),
        (8..12, None),
    ])
    .unwrap();
    let out = b
        .clip
        .vision
        .forward(&all, Some(&mixed), false)
        .unwrap()
        .embeds;
    let sep1 = b
        .clip
        .vision
        .forward(&pixels.narrow(0, 0, 4).unwrap(), Some(&h1), false)
        .unwrap()
        .embeds;
    let sep2 = b
        .clip
        .vision
        .forward(&pixels.narrow(0, 4, 4).unwrap(), Some(&h2), false)
        .unwrap()
        .embeds;
    let plain = b
        .clip
        .vision
        .forward(&pixels.narrow(0, 0, 4).unwrap(), None, false)
        .unwrap()
        .embeds;
    assert!(max_diff(&out.narrow(0, 0, 4).unwrap(), &sep1) < 1e-5);
    assert!(max_diff(&out.narrow(0, 4, 4).unwrap(), &sep2) < 1e-5);
    assert!(max_diff(&out.narrow(0, 8, 4).unwrap(), &plain) < 1e-5);
    assert!(
        max_diff(&sep1, &plain) > 1e-3,
        "the adapter must change something"
    );
    // Text: texts 0-1 task 2, text 2 task 1.
    let (x1, x2) = (t1.text_hook(32).unwrap(), t2.text_hook(32).unwrap());
    let mixed = MixedHook::new(vec![
        (0..2, Some(&x2 as &dyn BlockHook)),
        (2..3, Some(&x1 as &dyn BlockHook)),
    ])
    .unwrap();
    let out = b
        .clip
        .text
        .forward(&ids, &eot, Some(&mixed), false)
        .unwrap()
        .embeds;
    let s2 = b
        .clip
        .text
        .forward(&ids, &eot, Some(&x2), false)
        .unwrap()
        .embeds;
    let s1 = b
        .clip
        .text
        .forward(&ids, &eot, Some(&x1), false)
        .unwrap()
        .embeds;
    assert!(max_diff(&out.narrow(0, 0, 2).unwrap(), &s2.narrow(0, 0, 2).unwrap()) < 1e-5);
    assert!(max_diff(&out.narrow(0, 2, 1).unwrap(), &s1.narrow(0, 2, 1).unwrap()) < 1e-5);
    // Ranges must tile the batch.
    assert!(MixedHook::new(vec![(0..2, None), (3..4, None)]).is_err());
}

#[test]
fn gradients_reach_every_parameter_including_the_shared_factor() {
    let b = tiny();
    let (pixels, mask, ids, eot) = inputs(&b);
    for tying in [Tying::DownIn, Tying::DownOut, Tying::Kronecker] {
        let c = tiny_config(&b, tying);
        let (a, vm) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
        let hook = a.video_hook(&mask).unwrap();
        let v = b
            .clip
            .vision
            .forward(&pixels, Some(&hook), false)
            .unwrap()
            .embeds;
        let v = pool_frames(&v, &mask).unwrap();
        let th = a.text_hook(32).unwrap();
        let t = b
            .clip
            .text
            .forward(&ids, &eot, Some(&th), false)
            .unwrap()
            .embeds;
        let t = mvserve::backbone::l2_normalize(&t).unwrap();
        let loss = t.matmul(&v.t().unwrap()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let mut zero = vec![];
        for (name, var) in data.iter() {
            match grads.get(var.as_tensor()) {
                Some(g) => {
                    let n = g
                        .abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    if n == 0.0 || !n.is_finite() {
                        zero.push(name.clone());
                    }
                }
                None => zero.push(name.clone()),
            }
        }
        assert!(zero.is_empty(), "{tying:?}: no gradient for {zero:?}");
    }
}

#[test]
fn the_shared_factor_is_one_variable_for_both_modalities() {
    let c = vit_b_32(Tying::DownIn);
    let (a, vm) = TaskAdapter::trainable(&c, AdapterInit::Authors, None, &Device::Cpu).unwrap();
    let data = vm.data().lock().unwrap();
    let shared: &Var = &data["cmt.11.shared"];
    assert_eq!(shared.dims(), &[32]);
    // At init f_C = 0 so beta is md_proj's bias (the authors do not re-initialise md_proj).
    let beta = a.video_layer(11).unwrap().down().factor().unwrap().unwrap();
    assert_eq!(max_diff(&beta, &data["vision.11.cmt.bias"]), 0.0);
    // Changing the one Var changes both modalities' factors.
    shared
        .set(&Tensor::ones(32, DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let tb = a.text_layer(11).unwrap().down().factor().unwrap().unwrap();
    assert!(max_diff(&tb, &data["text.11.cmt.bias"]) > 1e-3);
    let vb2 = a.video_layer(11).unwrap().down().factor().unwrap().unwrap();
    assert!(max_diff(&vb2, &beta) > 1e-3);
}

#[test]
fn kronecker_weight_is_a_sum_of_kronecker_products() {
    let c = AdapterConfig {
        tied_layers: vec![1],
        ..AdapterConfig::standard(
            BackboneDims {
                vision_width: 8,
                vision_layers: 2,
                text_width: 8,
                text_layers: 2,
            },
            2,
            4,
            Tying::Kronecker,
        )
    };
    let c = AdapterConfig {
        width: 4,
        kron_n: 2,
        ..c
    };
    let (a, vm) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    let data = vm.data().lock().unwrap();
    let s: Vec<Vec<Vec<f32>>> = data["cmt.1.kron_s"].as_tensor().to_vec3().unwrap(); // (2,2,2)
    let m: Vec<Vec<Vec<f32>>> = data["vision.1.down.kron_m"].as_tensor().to_vec3().unwrap(); // (2,2,4)
    let w: Vec<Vec<f32>> = a
        .video_layer(1)
        .unwrap()
        .down()
        .weight()
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!((w.len(), w[0].len()), (4, 8));
    for (r, row) in w.iter().enumerate() {
        for (col, &x) in row.iter().enumerate() {
            let (ai, bi, ci, di) = (r / 2, r % 2, col / 4, col % 4);
            let want: f32 = (0..2).map(|i| s[i][ai][ci] * m[i][bi][di]).sum();
            assert!((x - want).abs() < 1e-6, "W[{r},{col}] {x} vs {want}");
        }
    }
    // Untied layer 0 keeps a plain W_down.
    assert!(data.contains_key("vision.0.down.weight"));
    assert!(!data.contains_key("vision.1.down.weight"));
}

#[test]
fn inputs_that_do_not_fit_are_clear_errors() {
    let b = tiny();
    let c = tiny_config(&b, Tying::DownIn);
    let (a, _) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    let e = a.text_hook(33).err().unwrap().to_string();
    assert!(e.contains("at most 32 tokens"), "{e}");
    let too_many = Tensor::ones((1, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(a.video_hook(&too_many).is_err());
    // The module itself refuses a text longer than its positional table without the hook's check.
    let f = Tensor::zeros((1, 33, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(a.text_layer(0).unwrap().forward(&f).is_err());
    // A frame mask that does not match the batch.
    let mask = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
    let hook = a.video_hook(&mask).unwrap();
    let s = b.clip.config.vision_config.image_size;
    let pixels = Tensor::zeros((3, 3, s, s), DType::F32, &Device::Cpu).unwrap();
    assert!(b.clip.vision.forward(&pixels, Some(&hook), false).is_err());
    // Invalid configs.
    let mut bad = c.clone();
    bad.tied_layers = vec![5];
    assert!(bad.validate().is_err());
    let mut bad = c.clone();
    bad.heads = 3;
    assert!(bad.validate().is_err());
    assert!(TaskAdapter::new(
        &bad,
        VarBuilder::zeros(DType::F32, &Device::Cpu),
        AdapterInit::Authors
    )
    .is_err());
}

#[test]
fn fewer_frames_than_configured_use_the_start_of_the_table() {
    // A video of 2 frames through a 4-frame adapter == the same 2 frames padded to 4 and masked?
    // No: the authors slice the positional table to 2F+1 rows, so a shorter clip is a different
    // sequence. Check only that it runs and pools.
    let b = tiny();
    let c = tiny_config(&b, Tying::DownOut);
    let (a, _) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    let s = b.clip.config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (2, 3, s, s), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap();
    let hook = a.video_hook(&mask).unwrap();
    let e = b
        .clip
        .vision
        .forward(&pixels, Some(&hook), false)
        .unwrap()
        .embeds;
    let v = pool_frames(&e, &mask).unwrap();
    assert_eq!(v.dims(), &[1, 32]);
}

#[test]
fn without_the_cross_frame_part_the_video_embedding_ignores_frame_order() {
    let b = tiny();
    let (pixels, mask, _, _) = inputs(&b);
    let pixels = pixels.narrow(0, 0, 4).unwrap();
    let mask = mask.narrow(0, 0, 1).unwrap();
    let reversed = pixels
        .index_select(&Tensor::new(&[3u32, 2, 1, 0], &Device::Cpu).unwrap(), 0)
        .unwrap();
    let embed = |a: &TaskAdapter, p: &Tensor| {
        let hook = a.video_hook(&mask).unwrap();
        let f = b.clip.vision.forward(p, Some(&hook), false).unwrap().embeds;
        pool_frames(&f, &mask).unwrap()
    };
    let plain = pool_frames(
        &b.clip.vision.forward(&pixels, None, false).unwrap().embeds,
        &mask,
    )
    .unwrap();
    for cross_frame in [false, true] {
        let mut c = tiny_config(&b, Tying::DownIn);
        c.temporal = cross_frame;
        c.video_trm = cross_frame;
        let (a, _) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
        let (fwd, rev) = (embed(&a, &pixels), embed(&a, &reversed));
        assert!(max_diff(&fwd, &plain) > 1e-3, "the adapter must act");
        if cross_frame {
            // With the TRM and its positional table the order matters (the test can fail).
            assert!(max_diff(&fwd, &rev) > 1e-4, "{}", max_diff(&fwd, &rev));
        } else {
            assert!(max_diff(&fwd, &rev) < 1e-6, "{}", max_diff(&fwd, &rev));
        }
    }
    // Calibration without the TRM is not a valid adapter.
    let mut c = tiny_config(&b, Tying::DownIn);
    c.video_trm = false;
    assert!(c.validate().is_err());
}

/// Texts cut after the batch's longest EOT (what serving does, `TextBatch`) embed as the authors'
/// layout padded to all 32 positions does, with a trained-looking (random) adapter: the tower and
/// the text adapter are causal or per token, so the padding never reaches an EOT feature.
#[test]
fn texts_cut_after_their_longest_eot_embed_as_padded_texts() {
    let b = tiny();
    let texts = [
        "a dog runs left",
        "a car turns right at night",
        "two people talk",
    ];
    let (ids, eot) = b.tokenize_batch(&texts, 32).unwrap();
    let cut = b.text_batch(&texts, 32).unwrap();
    let longest = eot.to_vec1::<u32>().unwrap().into_iter().max().unwrap() as usize + 1;
    assert_eq!(cut.0.dims(), &[3, longest]);
    assert!(longest < 32);
    for tying in [Tying::DownIn, Tying::None] {
        let c = tiny_config(&b, tying);
        let t = TaskAdapter::init_tensors(&c, AdapterInit::Random, &Device::Cpu).unwrap();
        let a = TaskAdapter::from_tensors(&c, t, &Device::Cpu).unwrap();
        let padded = b
            .clip
            .text
            .forward(&ids, &eot, Some(&a.text_hook(32).unwrap()), false)
            .unwrap()
            .embeds;
        let short = b
            .clip
            .text
            .forward(&cut.0, &cut.1, Some(&a.text_hook(longest).unwrap()), false)
            .unwrap()
            .embeds;
        let d = max_diff(&padded, &short);
        assert!(d < 1e-5, "{tying:?}: {d}");
        let plain = b.clip.text.forward(&ids, &eot, None, false).unwrap().embeds;
        assert!(
            max_diff(&plain, &padded) > 1e-3,
            "the adapter must change the embedding"
        );
    }
    // And through the whole embedding path.
    let whole = b.embed_texts(&texts, 32, None).unwrap();
    let plain = b.clip.text.forward(&ids, &eot, None, false).unwrap().embeds;
    let plain = mvserve::backbone::l2_normalize(&plain).unwrap();
    assert!(max_diff(&whole, &plain) < 1e-5);
}

#[test]
fn a_served_text_adapter_runs_on_packed_weights_and_embeds_as_the_unpacked_one() {
    let b = tiny();
    let (_, _, ids, eot) = inputs(&b);
    for tying in [Tying::DownIn, Tying::DownOut, Tying::Kronecker, Tying::None] {
        let c = tiny_config(&b, tying);
        let t = TaskAdapter::init_tensors(&c, AdapterInit::Random, &Device::Cpu).unwrap();
        // Built from the same tensors without the serving preparation.
        let vb = VarBuilder::from_tensors(t.clone(), DType::F32, &Device::Cpu);
        let unpacked = TaskAdapter::new(&c, vb, AdapterInit::Authors).unwrap();
        let served = TaskAdapter::from_tensors(&c, t, &Device::Cpu).unwrap();
        for l in &c.text_layers {
            assert!(served.text_layer(*l).unwrap().is_prepacked(), "{tying:?}");
            assert!(!unpacked.text_layer(*l).unwrap().is_prepacked());
        }
        // One text (its rows go through the packed weights) and three (96 rows: too many for
        // them, the plain product on both sides).
        for rows in [1, 3] {
            let (ids, eot) = (
                ids.narrow(0, 0, rows).unwrap(),
                eot.narrow(0, 0, rows).unwrap(),
            );
            let embed = |a: &TaskAdapter| {
                let hook = a.text_hook(32).unwrap();
                let out = b.clip.text.forward(&ids, &eot, Some(&hook), false);
                out.unwrap().embeds
            };
            let (p, u) = (embed(&served), embed(&unpacked));
            let d = max_diff(&p, &u);
            assert!(d < 1e-5, "{tying:?}, {rows} texts: {d}");
            let plain = b.clip.text.forward(&ids, &eot, None, false).unwrap();
            assert!(max_diff(&plain.embeds, &p) > 1e-3, "the adapter must act");
        }
        // Block by block: the served routine (one text or two: at most 64 rows) against the
        // same adapter's candle ops and the unprepared adapter, at lengths around the packed
        // kernel's tiles, and above 64 rows (the tensor path on both sides).
        let d = b.clip.config.text_config.hidden_size;
        for (n, len) in [(1, 1), (1, 7), (1, 17), (1, 32), (2, 32), (3, 32)] {
            let f = Tensor::randn(0f32, 1.0, (n, len, d), &Device::Cpu).unwrap();
            for l in &c.text_layers {
                let s = served.text_layer(*l).unwrap();
                let got = s.forward(&f).unwrap();
                let ops = s.forward_tensors(&f).unwrap();
                let reference = unpacked.text_layer(*l).unwrap().forward(&f).unwrap();
                assert_eq!(got.dims(), [n, len, d]);
                let (a, r) = (max_diff(&got, &ops), max_diff(&got, &reference));
                assert!(
                    a < 1e-5 && r < 1e-5,
                    "{tying:?} layer {l}, {n} x {len}: {a} / {r}"
                );
                assert!(
                    max_diff(&got, &f.zeros_like().unwrap()) > 1e-3,
                    "the adapter must act"
                );
                // Each SIMD copy of the routine this CPU runs (the served one is the widest).
                for level in simd::available() {
                    match s.forward_served_at(level, &f).unwrap() {
                        Some(at) => {
                            let a = max_diff(&at, &ops);
                            assert!(a < 1e-5, "{tying:?} layer {l}, {n} x {len}, {level:?}: {a}");
                        }
                        None => assert!(n * len > 64, "{n} x {len} not served"),
                    }
                }
            }
        }
    }
    // Trainable adapters keep no copies: their parameters change between steps.
    let c = tiny_config(&b, Tying::DownIn);
    let (a, _) = TaskAdapter::trainable(&c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    assert!(!a.text_layer(c.text_layers[0]).unwrap().is_prepacked());
}
