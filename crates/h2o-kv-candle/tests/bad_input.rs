//! Bad input gives an error value, never a panic, and changes nothing.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::{Tiny, VOCAB, temp_file, tiny_gguf};
use h2o_kv::{AnyPolicy, H2O, LayerCache, Recent};
use h2o_kv_candle::llama::{self, LlamaCache};
use h2o_kv_candle::{Error, TensorLayerCache};

#[test]
fn a_missing_file_is_an_io_error() {
    let err = llama::load("no/such/model.gguf".as_ref()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn a_non_gguf_file_is_refused() {
    let p = temp_file("not.gguf", b"this is a text file, not a model\n");
    let err = llama::load(&p).unwrap_err();
    assert!(matches!(err, Error::NotGguf { .. }), "{err:?}");
}

#[test]
fn a_truncated_file_is_refused_before_reading_weights() {
    let bytes = tiny_gguf(&Tiny::default());
    let p = temp_file("truncated.gguf", &bytes[..bytes.len() - 100]);
    let err = llama::load(&p).unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    // Cut inside the header: not readable as GGUF at all.
    let p = temp_file("header.gguf", &bytes[..40]);
    let err = llama::load(&p).unwrap_err();
    assert!(matches!(err, Error::NotGguf { .. }), "{err:?}");
}

#[test]
fn an_unsupported_architecture_is_named() {
    let p = temp_file("gpt2.gguf", &tiny_gguf(&Tiny { arch: "gpt2", ..Tiny::default() }));
    match llama::load(&p).unwrap_err() {
        Error::UnsupportedArchitecture(a) => assert_eq!(a, "gpt2"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn an_unsupported_weight_type_is_named() {
    let p = temp_file(
        "q81.gguf",
        &tiny_gguf(&Tiny { weight_type: GgmlDType::Q8_1, ..Tiny::default() }),
    );
    match llama::load(&p).unwrap_err() {
        Error::UnsupportedQuantization { tensor, dtype } => {
            assert_eq!((tensor.as_str(), dtype), ("blk.0.attn_q.weight", GgmlDType::Q8_1));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn the_supported_types_load_and_run() {
    for ty in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::F16, GgmlDType::F32] {
        let p = temp_file(
            &format!("{ty:?}.gguf"),
            &tiny_gguf(&Tiny { weight_type: ty, ..Tiny::default() }),
        );
        let (model, _) = llama::load(&p).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
        let mut cache = LlamaCache::full(model.config()).unwrap();
        let logits = model.forward(&mut cache, &[3, 4, 5]).unwrap();
        assert_eq!(logits.dims(), [VOCAB]);
    }
}

#[test]
fn a_vocabulary_mismatch_is_refused() {
    // One token more in the tokenizer than rows in the embedding.
    let p = temp_file("vocab.gguf", &tiny_gguf(&Tiny { tokens: VOCAB + 1, ..Tiny::default() }));
    match llama::load(&p).unwrap_err() {
        Error::VocabMismatch { tokenizer, model } => {
            assert_eq!((tokenizer, model), (VOCAB + 1, VOCAB))
        }
        e => panic!("{e:?}"),
    }
}

fn tiny() -> llama::Llama {
    let p = temp_file("ok.gguf", &tiny_gguf(&Tiny::default()));
    llama::load(&p).unwrap().0
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_by_a_full_cache() {
    let model = tiny(); // context 16
    let mut cache = LlamaCache::full(model.config()).unwrap();
    let err = model.forward(&mut cache, &[3; 17]).unwrap_err();
    assert!(matches!(err, Error::ContextExceeded { tokens: 17, capacity: 16 }), "{err:?}");
    assert_eq!(cache.next_position(), 0, "nothing was taken");
    model.forward(&mut cache, &[3; 16]).unwrap();
    let err = model.forward(&mut cache, &[4]).unwrap_err();
    assert!(matches!(err, Error::ContextExceeded { tokens: 17, capacity: 16 }), "{err:?}");
    assert_eq!(cache.next_position(), 16);
}

#[test]
fn an_evicting_policy_decodes_past_the_context() {
    let model = tiny(); // context 16
    let mut cache = LlamaCache::new(model.config(), H2O::new(4, 4).unwrap().into()).unwrap();
    model.forward(&mut cache, &[3; 12]).unwrap();
    for t in 0..40u32 {
        let logits = model.forward(&mut cache, &[3 + t % 6]).unwrap();
        assert!(logits.to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()));
    }
    assert_eq!(cache.next_position(), 52);
    assert!(cache.layers().iter().all(|l| l.len() == 8));
}

#[test]
fn out_of_range_and_empty_token_lists_are_refused() {
    let model = tiny();
    let mut cache = LlamaCache::full(model.config()).unwrap();
    let err = model.forward(&mut cache, &[3, VOCAB as u32]).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { id, .. } if id == VOCAB as u32), "{err:?}");
    assert!(matches!(model.forward(&mut cache, &[]).unwrap_err(), Error::NoTokens));
    assert_eq!(cache.next_position(), 0);
}

#[test]
fn a_per_layer_list_of_the_wrong_length_is_refused() {
    let model = tiny();
    let p: AnyPolicy = Recent::new(4).unwrap().into();
    let err = LlamaCache::per_layer(model.config(), &[p; 3]).unwrap_err();
    assert!(matches!(err, Error::LayerCount { got: 3, layers: 2 }), "{err:?}");
}

#[test]
fn a_shared_prefill_needs_empty_caches() {
    let model = tiny();
    let p: AnyPolicy = Recent::new(4).unwrap().into();
    let mut caches = vec![
        LlamaCache::new(model.config(), p).unwrap(),
        LlamaCache::new(model.config(), p).unwrap(),
    ];
    model.forward(&mut caches[1], &[3]).unwrap();
    let err = model.prefill_shared(&mut caches, &[3, 4]).unwrap_err();
    assert!(matches!(err, Error::NotEmpty { index: 1, len: 2 }), "{err:?}");
    assert_eq!(caches[0].next_position(), 0);
}

#[test]
fn adapter_shapes_dtypes_and_values_are_checked_before_any_change() {
    let layer = LayerCache::<f32, _>::new(4, 2, 8, H2O::new(2, 2).unwrap()).unwrap();
    let mut cache = TensorLayerCache::new(layer);
    let dev = Device::Cpu;
    let q = Tensor::ones((4, 8), DType::F32, &dev).unwrap();
    let kv = Tensor::ones((2, 8), DType::F32, &dev).unwrap();
    cache.step(&q, &kv, &kv).unwrap();
    let before = cache.layer().snapshot();

    let err = cache.step(&kv, &kv, &kv).unwrap_err();
    assert!(matches!(err, Error::Shape { what: "query", .. }), "{err:?}");
    let err = cache.step(&q, &q, &kv).unwrap_err();
    assert!(matches!(err, Error::Shape { what: "key", .. }), "{err:?}");
    let ints = Tensor::ones((4, 8), DType::U32, &dev).unwrap();
    let err = cache.step(&ints, &kv, &kv).unwrap_err();
    assert!(matches!(err, Error::DType { what: "query", .. }), "{err:?}");
    let nan = (Tensor::ones((2, 8), DType::F32, &dev).unwrap() * f64::NAN).unwrap();
    let err = cache.step(&q, &kv, &nan).unwrap_err();
    assert!(matches!(err, Error::Cache(h2o_kv::Error::NonFinite { what: "value", .. })), "{err:?}");
    // A prefill whose rows disagree in length.
    let q3 = Tensor::ones((3, 4, 8), DType::F32, &dev).unwrap();
    let kv2 = Tensor::ones((2, 2, 8), DType::F32, &dev).unwrap();
    let err = cache.prefill(&q3, &kv2, &kv2).unwrap_err();
    assert!(matches!(err, Error::Shape { what: "key", .. }), "{err:?}");
    // A teacher-forced run with a NaN in its last row changes nothing either.
    let mut bad = vec![1f32; 3 * 2 * 8];
    bad[3 * 2 * 8 - 1] = f32::NAN;
    let bad = Tensor::from_vec(bad, (3, 2, 8), &dev).unwrap();
    let kv3 = Tensor::ones((3, 2, 8), DType::F32, &dev).unwrap();
    assert!(cache.step_sequence(&q3, &kv3, &bad).is_err());

    assert_eq!(cache.layer().snapshot(), before, "no failed call changed the cache");
}
