/** Reads NumPy .npy files (v1-v3, little-endian f4/f2/i4/i2/i1/u1..., C order) into Tensors. */
import { readFileSync } from 'node:fs';

import { Tensor, type DType } from '../../lib/index.js';

const NPY_DTYPES: Record<string, DType> = {
  '<f4': 'f32', '<f2': 'f16', '<i4': 'i32', '<u4': 'u32', '<i2': 'i16', '<u2': 'u16', '|i1': 'i8', '|u1': 'u8',
};

export function readNpy(path: string): Tensor {
  const bytes = readFileSync(path);
  if (bytes.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${path}: not a .npy file`);
  const major = bytes[6]!;
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = bytes.toString('latin1', headerStart, headerStart + headerLength);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  const dtype = descr ? NPY_DTYPES[descr] : undefined;
  if (!dtype || fortran || shapeText === undefined) throw new Error(`${path}: unsupported header ${header.trim()}`);
  const shape = shapeText.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const dataStart = headerStart + headerLength;
  // copy into a fresh, aligned buffer: the file's data offset need not be aligned
  const data = new Uint8Array(bytes.subarray(dataStart)).buffer;
  switch (dtype) {
    case 'f32': return Tensor.from(new Float32Array(data), shape);
    case 'f16': return Tensor.from(new Uint16Array(data), shape, 'f16');
    case 'i32': return Tensor.from(new Int32Array(data), shape);
    case 'u32': return Tensor.from(new Uint32Array(data), shape);
    case 'i16': return Tensor.from(new Int16Array(data), shape);
    case 'u16': return Tensor.from(new Uint16Array(data), shape);
    case 'i8': return Tensor.from(new Int8Array(data), shape);
    default: return Tensor.from(new Uint8Array(data), shape);
  }
}
