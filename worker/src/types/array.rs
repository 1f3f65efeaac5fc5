//! Array(T): a JSON array of T's values; in rows, copied as written when T's values are, else item by item.

use super::value::{At, Loc, ValueSeed};
use super::{write_value, Family, Ty};
use serde::de::SeqAccess;
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq)]
pub struct Array(pub Box<Ty>);

impl Family for Array {
    fn want(&self) -> &'static str {
        "an array"
    }
    fn check_seq<'de, A: SeqAccess<'de>>(&self, mut seq: A, at: At<'_, '_>) -> Result<(), A::Error> {
        let At { loc: parent, errors } = at;
        let mut i = 0;
        loop {
            let item = ValueSeed { ty: &self.0, at: At { loc: Loc::Index(&parent, i), errors: &mut *errors } };
            if seq.next_element_seed(item)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn verbatim(&self) -> bool {
        self.0.verbatim()
    }
    fn write(&self, raw: &RawValue, out: &mut Vec<u8>) -> Result<(), String> {
        let text = raw.get();
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| format!("expected an array, got {text}"))?;
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_value(&self.0, item, out)?;
        }
        out.push(b']');
        Ok(())
    }
}
