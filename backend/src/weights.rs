//! Where parameters come from: memory-mapped safetensors files ([`SafetensorsWeights`],
//! single or sharded through `model.safetensors.index.json`) or random values for a
//! model described only by its `config.json` ([`DummyWeights`], like vLLM's
//! `--load-format dummy`, for benchmarks).
//!
//! A [`HostTensor`] keeps the checkpoint's dtype: 16-bit weights stay 16-bit and,
//! when the file's data is suitably aligned, are not even copied out of the mapping.
//! Old writers can leave tensors unaligned; those are copied once at load.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::config::DType;
use crate::error::LoadError;

/// A slice of `T` living either in a file mapping or in our own allocation.
#[derive(Debug)]
pub enum Storage<T> {
    Mapped { map: Arc<Mmap>, offset: usize, len: usize },
    Owned(Vec<T>),
}

impl<T: bytemuck::Pod> Storage<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            // The offset and alignment were checked when the storage was made.
            Storage::Mapped { map, offset, len } => {
                bytemuck::cast_slice(&map[*offset..*offset + len * size_of::<T>()])
            }
            Storage::Owned(v) => v,
        }
    }

    fn from_bytes(map: &Arc<Mmap>, offset: usize, bytes: usize) -> Self {
        let len = bytes / size_of::<T>();
        let slice = &map[offset..offset + bytes];
        match bytemuck::try_cast_slice::<u8, T>(slice) {
            Ok(_) => Storage::Mapped { map: Arc::clone(map), offset, len },
            Err(_) => Storage::Owned(bytemuck::pod_collect_to_vec(slice)),
        }
    }
}

/// Parameter data in the checkpoint's own dtype.
#[derive(Debug)]
pub enum TensorData {
    F32(Storage<f32>),
    Bf16(Storage<bf16>),
    F16(Storage<f16>),
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::Bf16(_) => DType::Bf16,
            TensorData::F16(_) => DType::F16,
        }
    }

    /// Widen to f32 (small tensors only: norms, biases, one embedding row).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            TensorData::F32(s) => s.as_slice().to_vec(),
            TensorData::Bf16(s) => s.as_slice().iter().map(|x| x.to_f32()).collect(),
            TensorData::F16(s) => s.as_slice().iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// One named parameter on the host.
#[derive(Debug)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl HostTensor {
    /// Stack tensors with equal trailing dimensions along dimension 0 (fusing q/k/v
    /// or gate/up projections into one matrix). Copies into owned memory.
    pub fn concat_rows(name: &str, parts: Vec<HostTensor>) -> Result<HostTensor, LoadError> {
        let first =
            parts.first().ok_or_else(|| LoadError::Other(format!("{name}: nothing to fuse")))?;
        let (dtype, tail) = (first.data.dtype(), first.shape[1..].to_vec());
        if let Some(odd) =
            parts.iter().find(|p| p.data.dtype() != dtype || p.shape[1..] != tail[..])
        {
            return Err(LoadError::Other(format!(
                "cannot fuse `{}` ({:?}, {:?}) with `{}` ({:?}, {:?}) into `{name}`",
                odd.name,
                odd.data.dtype(),
                odd.shape,
                first.name,
                dtype,
                first.shape
            )));
        }
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        let mut shape = vec![rows];
        shape.extend_from_slice(&tail);
        fn cat<T: bytemuck::Pod>(
            parts: &[HostTensor],
            slice: impl Fn(&TensorData) -> Option<&[T]>,
        ) -> Storage<T> {
            let mut out =
                Vec::with_capacity(parts.iter().map(|p| p.shape.iter().product::<usize>()).sum());
            for p in parts {
                out.extend_from_slice(slice(&p.data).unwrap_or_default());
            }
            Storage::Owned(out)
        }
        // Every part has `dtype` (checked above), so each `slice` below matches.
        let data = match dtype {
            DType::F32 => TensorData::F32(cat(&parts, |d| match d {
                TensorData::F32(s) => Some(s.as_slice()),
                _ => None,
            })),
            DType::Bf16 => TensorData::Bf16(cat(&parts, |d| match d {
                TensorData::Bf16(s) => Some(s.as_slice()),
                _ => None,
            })),
            DType::F16 => TensorData::F16(cat(&parts, |d| match d {
                TensorData::F16(s) => Some(s.as_slice()),
                _ => None,
            })),
        };
        Ok(HostTensor { name: name.into(), shape, data })
    }
}

/// A source of named parameters with expected shapes.
pub trait WeightSource: Send + Sync {
    /// Load `name`, checking that it has exactly `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError>;
    fn contains(&self, name: &str) -> bool;
}

/// Where one tensor lives among the mapped files.
#[derive(Debug)]
struct TensorEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    bytes: std::ops::Range<usize>,
}

/// Memory-mapped safetensors files of one model directory.
#[derive(Debug)]
pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    index: HashMap<String, TensorEntry>,
    /// what to name in a "missing tensor" error
    origin: PathBuf,
}

impl SafetensorsWeights {
    /// Open `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let (names, origin) = if index_path.exists() {
            let index = crate::config::read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or(LoadError::MissingField { path: index_path.clone(), field: "weight_map" })?;
            let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            if files.is_empty() {
                return Err(LoadError::invalid(&index_path, "weight_map", "names no files"));
            }
            (files.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(), index_path)
        } else if single.exists() {
            (vec![single.clone()], single)
        } else {
            return Err(LoadError::Other(format!(
                "{}: no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)",
                dir.display()
            )));
        };

        let mut files = Vec::with_capacity(names.len());
        let mut index = HashMap::new();
        for (i, path) in names.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| LoadError::io(&path, e))?;
            // SAFETY: the mapping is read-only and we never hand out mutable access; a
            // file truncated under us would fault, as with any mmap-based loader.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                LoadError::Safetensors { path: path.clone(), message: e.to_string() }
            })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (start, end) = info.data_offsets;
                let entry = TensorEntry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: base + start..base + end,
                };
                index.insert(name, entry);
            }
            files.push((path, Arc::new(map)));
        }
        Ok(SafetensorsWeights { files, index, origin })
    }

    /// Total bytes of all mapped files.
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(|(_, m)| m.len()).sum()
    }
}

impl WeightSource for SafetensorsWeights {
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        let Some(TensorEntry { file, dtype, shape: found, bytes }) = self.index.get(name) else {
            return Err(LoadError::MissingTensor { path: self.origin.clone(), name: name.into() });
        };
        let (path, map) = &self.files[*file];
        if found != shape {
            return Err(LoadError::Shape {
                path: path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        let (start, len) = (bytes.start, bytes.len());
        let data = match dtype {
            Dtype::F32 => TensorData::F32(Storage::from_bytes(map, start, len)),
            Dtype::BF16 => TensorData::Bf16(Storage::from_bytes(map, start, len)),
            Dtype::F16 => TensorData::F16(Storage::from_bytes(map, start, len)),
            other => {
                return Err(LoadError::Dtype {
                    path: path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(HostTensor { name: name.into(), shape: shape.to_vec(), data })
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Another source's weights converted to one dtype at load (`--dtype`), rounding
/// to nearest even as torch's `.to()` does. Converted tensors are owned copies.
#[derive(Debug)]
pub struct CastWeights<S> {
    pub inner: S,
    pub dtype: DType,
}

impl<S: WeightSource> WeightSource for CastWeights<S> {
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        let t = self.inner.load(name, shape)?;
        if t.data.dtype() == self.dtype {
            return Ok(t);
        }
        let values = t.data.to_f32();
        let data = match self.dtype {
            DType::F32 => TensorData::F32(Storage::Owned(values)),
            DType::Bf16 => TensorData::Bf16(Storage::Owned(
                values.iter().map(|&v| bf16::from_f32(v)).collect(),
            )),
            DType::F16 => {
                TensorData::F16(Storage::Owned(values.iter().map(|&v| f16::from_f32(v)).collect()))
            }
        };
        Ok(HostTensor { data, ..t })
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}

/// Random weights for a model described by its config alone (benchmarks).
///
/// Values are scaled like a trained model's (matrices ~ N(0, 1/fan_in), norms near 1)
/// so activations stay finite through any depth; the data is deterministic in `seed`.
#[derive(Debug)]
pub struct DummyWeights {
    pub dtype: DType,
    pub seed: u64,
    /// Whether `lm_head.weight` exists (false for tied embeddings).
    pub has_lm_head: bool,
}

impl WeightSource for DummyWeights {
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor, LoadError> {
        let len: usize = shape.iter().product();
        let (center, scale) = if name.ends_with("norm.weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.contains("embed_tokens") {
            (0.0, 1.0)
        } else {
            (0.0, 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt())
        };
        let seed = self.seed ^ fnv1a(name.as_bytes());
        let value = |i: usize| center + scale * uniform_pm_sqrt3(seed, i as u64);
        let data = match self.dtype {
            DType::F32 => TensorData::F32(Storage::Owned(fill(len, value))),
            DType::Bf16 => {
                TensorData::Bf16(Storage::Owned(fill(len, |i| bf16::from_f32(value(i)))))
            }
            DType::F16 => TensorData::F16(Storage::Owned(fill(len, |i| f16::from_f32(value(i))))),
        };
        Ok(HostTensor { name: name.into(), shape: shape.to_vec(), data })
    }

    fn contains(&self, name: &str) -> bool {
        name != "lm_head.weight" || self.has_lm_head
    }
}

fn fill<T: Send>(len: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    (0..len).into_par_iter().with_min_len(1 << 16).map(f).collect()
}

/// A unit-variance uniform value in [-√3, √3), from a counter-based hash.
fn uniform_pm_sqrt3(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
    (unit * 2.0 - 1.0) * 3f32.sqrt()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Map<String, safetensors::tensor::TensorView> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                ((*n).to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn loads_mapped_tensor_with_its_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let vals: Vec<bf16> = (0..6).map(|i| bf16::from_f32(i as f32)).collect();
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &[("w", Dtype::BF16, vec![2, 3], bytemuck::cast_slice(&vals).to_vec())],
        );
        let w = SafetensorsWeights::open(dir.path()).unwrap();
        let t = w.load("w", &[2, 3]).unwrap();
        assert_eq!(t.data.dtype(), DType::Bf16);
        assert_eq!(t.data.to_f32(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn shape_dtype_and_missing_errors_name_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(
            &dir.path().join("model.safetensors"),
            &[("w", Dtype::F32, vec![2, 2], vec![0; 16]), ("q", Dtype::I8, vec![4], vec![0; 4])],
        );
        let w = SafetensorsWeights::open(dir.path()).unwrap();
        let msg = w.load("w", &[4, 1]).unwrap_err().to_string();
        assert!(msg.contains("model.safetensors") && msg.contains("`w`"), "{msg}");
        assert!(msg.contains("[2, 2]") && msg.contains("[4, 1]"), "{msg}");
        let msg = w.load("q", &[4]).unwrap_err().to_string();
        assert!(msg.contains("`q`") && msg.contains("I8"), "{msg}");
        let msg = w.load("nope", &[1]).unwrap_err().to_string();
        assert!(msg.contains("missing tensor `nope`"), "{msg}");
    }

    #[test]
    fn not_safetensors_and_no_weights_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let err = SafetensorsWeights::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no model.safetensors"), "{err}");
        std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
        let err = SafetensorsWeights::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }

    #[test]
    fn sharded_index_reads_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(
            &dir.path().join("a.safetensors"),
            &[("x", Dtype::F32, vec![1], vec![0, 0, 128, 63])],
        );
        write_safetensors(
            &dir.path().join("b.safetensors"),
            &[("y", Dtype::F32, vec![1], vec![0, 0, 0, 64])],
        );
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#,
        )
        .unwrap();
        let w = SafetensorsWeights::open(dir.path()).unwrap();
        assert_eq!(w.load("x", &[1]).unwrap().data.to_f32(), vec![1.0]);
        assert_eq!(w.load("y", &[1]).unwrap().data.to_f32(), vec![2.0]);
    }

    #[test]
    fn concat_rows_stacks_and_refuses_mixed_dtypes() {
        let d = DummyWeights { dtype: DType::Bf16, seed: 1, has_lm_head: true };
        let a = d.load("a", &[2, 3]).unwrap();
        let b = d.load("b", &[1, 3]).unwrap();
        let (av, bv) = (a.data.to_f32(), b.data.to_f32());
        let ab = HostTensor::concat_rows("ab", vec![a, b]).unwrap();
        assert_eq!(ab.shape, vec![3, 3]);
        assert_eq!(ab.data.to_f32(), [av, bv].concat());

        let f = DummyWeights { dtype: DType::F32, seed: 1, has_lm_head: true };
        let mixed = vec![d.load("a", &[2, 3]).unwrap(), f.load("c", &[2, 3]).unwrap()];
        let msg = HostTensor::concat_rows("ac", mixed).unwrap_err().to_string();
        assert!(msg.contains("`c`") && msg.contains("`ac`"), "{msg}");
    }

    #[test]
    fn dummy_weights_are_deterministic_and_scaled() {
        let d = DummyWeights { dtype: DType::F32, seed: 7, has_lm_head: false };
        let a = d.load("model.layers.0.mlp.up_proj.weight", &[64, 256]).unwrap().data.to_f32();
        let b = d.load("model.layers.0.mlp.up_proj.weight", &[64, 256]).unwrap().data.to_f32();
        assert_eq!(a, b);
        let var = a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32;
        assert!((var * 256.0 - 1.0).abs() < 0.1, "variance {var}");
        assert!(!d.contains("lm_head.weight"));
    }
}
