//! `calculate_area`: area (and perimeter) of a rectangle, circle or triangle.
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_args;
use nightshift_core::governance::Hints;

use crate::{Tool, ToolDef, ToolError, ToolSource};

/// Computes areas of simple shapes from validated, positive, finite dimensions.
#[derive(Debug, Default)]
pub struct CalculateArea;

#[derive(Deserialize)]
struct Args {
    shape: String,
    width: Option<f64>,
    height: Option<f64>,
    radius: Option<f64>,
    base: Option<f64>,
    a: Option<f64>,
    b: Option<f64>,
    c: Option<f64>,
}

fn required(name: &str, shape: &str, v: Option<f64>) -> Result<f64, ToolError> {
    let v = v.ok_or_else(|| ToolError::InvalidArguments(format!("a {shape} needs '{name}'")))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(ToolError::InvalidArguments(format!("'{name}' must be a positive number (got {v})")));
    }
    Ok(v)
}

/// Rounds for display so that 0.1 + 0.2 style noise does not reach the model.
fn round(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

#[async_trait]
impl Tool for CalculateArea {
    fn definition(&self) -> ToolDef {
        let dim = |d: &str| json!({"type": "number", "exclusiveMinimum": 0, "description": d});
        ToolDef {
            name: "calculate_area".into(),
            description: "Calculates the area and perimeter of a shape. rectangle: width and height; circle: radius; \
                triangle: base and height, or the three side lengths a, b and c."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "shape": {"type": "string", "enum": ["rectangle", "circle", "triangle"]},
                    "width": dim("rectangle width"),
                    "height": dim("rectangle or triangle height"),
                    "radius": dim("circle radius"),
                    "base": dim("triangle base"),
                    "a": dim("triangle side a"),
                    "b": dim("triangle side b"),
                    "c": dim("triangle side c"),
                },
                "required": ["shape"],
                "additionalProperties": false,
            }),
            source: ToolSource::Local,
            hints: Hints { read_only: true, ..Hints::default() },
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let a: Args = parse_args(args)?;
        let shape = a.shape.as_str();
        let (area, perimeter, dims) = match shape {
            "rectangle" => {
                let (w, h) = (required("width", shape, a.width)?, required("height", shape, a.height)?);
                (w * h, Some(2.0 * (w + h)), json!({"width": w, "height": h}))
            }
            "circle" => {
                let r = required("radius", shape, a.radius)?;
                (std::f64::consts::PI * r * r, Some(2.0 * std::f64::consts::PI * r), json!({"radius": r}))
            }
            "triangle" if a.a.is_some() || a.b.is_some() || a.c.is_some() => {
                let (x, y, z) = (required("a", shape, a.a)?, required("b", shape, a.b)?, required("c", shape, a.c)?);
                if x + y <= z || x + z <= y || y + z <= x {
                    return Err(ToolError::InvalidArguments(format!(
                        "sides {x}, {y}, {z} do not form a triangle (each side must be shorter than the other two together)"
                    )));
                }
                // Heron's formula.
                let s = (x + y + z) / 2.0;
                ((s * (s - x) * (s - y) * (s - z)).sqrt(), Some(x + y + z), json!({"a": x, "b": y, "c": z}))
            }
            "triangle" => {
                let (b, h) = (required("base", shape, a.base)?, required("height", shape, a.height)?);
                (0.5 * b * h, None, json!({"base": b, "height": h}))
            }
            other => {
                return Err(ToolError::InvalidArguments(format!(
                    "unknown shape '{other}'; use rectangle, circle or triangle"
                )));
            }
        };
        let mut out = json!({"shape": shape, "dimensions": dims, "area": round(area)});
        if let Some(p) = perimeter {
            out["perimeter"] = json!(round(p));
        }
        Ok(out.to_string())
    }
}
