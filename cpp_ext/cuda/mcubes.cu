// Marching cubes on the GPU: classify points (needed edges) -> exclusive scan
// (vertex ids) -> emit vertices; classify cubes (triangle counts) -> exclusive
// scan -> emit faces that look their vertex ids up by edge. Vertex ids follow
// (point linear index, axis) and faces (cube linear index, table order), the
// same order as the CPU kernel.
#include <mutex>

#include "cuda_util.cuh"
#include "holopart/mc_common.hpp"
#include "kernels_cuda.hpp"

namespace holopart {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__constant__ int8_t c_tris[256 * kMaxTrianglesPerCube * 3];
__constant__ uint8_t c_ntri[256];

void upload_table() {
    // One upload per device the process uses.
    static std::mutex mu;
    static bool done[64] = {};
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    std::lock_guard<std::mutex> lock(mu);
    if (dev < 64 && done[dev]) return;
    const McTable& t = mc_table();
    check(cudaMemcpyToSymbol(c_tris, t.tris, sizeof(t.tris)), "upload case table");
    check(cudaMemcpyToSymbol(c_ntri, t.ntri, sizeof(t.ntri)), "upload case table");
    if (dev < 64) done[dev] = true;
}

#define GRID_STRIDE(var, n)                                                      \
    for (int64_t var = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; var < (n); \
         var += (int64_t)gridDim.x * blockDim.x)

__global__ void any_unknown_kernel(const float* __restrict__ vol, int64_t n, int* flag) {
    GRID_STRIDE(p, n) {
        if (hp_is_unknown(vol[p])) {
            *flag = 1;
            return;
        }
    }
}

__global__ void edge_mask_kernel(const float* __restrict__ vol, int64_t nx, int64_t ny, int64_t nz,
                                 float level, bool unk, uint8_t* __restrict__ mask,
                                 uint32_t* __restrict__ count) {
    GRID_STRIDE(p, nx * ny * nz) {
        const int64_t k = p % nz, j = (p / nz) % ny, i = p / (ny * nz);
        const unsigned m = hp_point_edge_mask(vol, nx, ny, nz, i, j, k, level, unk);
        mask[p] = static_cast<uint8_t>(m);
        count[p] = __popc(m);
    }
}

__global__ void emit_vertices_kernel(const float* __restrict__ vol, int64_t nx, int64_t ny,
                                     int64_t nz, float level, const uint8_t* __restrict__ mask,
                                     const uint32_t* __restrict__ vbase, double sx, double sy,
                                     double sz, double ox, double oy, double oz,
                                     float* __restrict__ verts, float* __restrict__ values) {
    const double spacing[3] = {sx, sy, sz};
    const double origin[3] = {ox, oy, oz};
    GRID_STRIDE(p, nx * ny * nz) {
        const unsigned m = mask[p];
        if (!m) continue;
        const int64_t k = p % nz, j = (p / nz) % ny, i = p / (ny * nz);
        uint32_t id = vbase[p];
        for (int d = 0; d < 3; ++d) {
            if (!(m & (1u << d))) continue;
            hp_edge_vertex(vol, ny, nz, i, j, k, d, level, spacing, origin, verts + (int64_t)id * 3,
                           values + id);
            ++id;
        }
    }
}

__global__ void cube_count_kernel(const float* __restrict__ vol, int64_t nx, int64_t ny, int64_t nz,
                                  float level, bool unk, uint8_t* __restrict__ cases,
                                  uint32_t* __restrict__ count) {
    const int64_t cy = ny - 1, cz = nz - 1;
    GRID_STRIDE(c, (nx - 1) * cy * cz) {
        const int64_t k = c % cz, j = (c / cz) % cy, i = c / (cy * cz);
        const int cs = hp_cube_case(vol, ny, nz, i, j, k, level, unk);
        const int valid = cs > 0 && cs < 255;
        cases[c] = valid ? static_cast<uint8_t>(cs) : 0;
        count[c] = valid ? c_ntri[cs] : 0;
    }
}

__global__ void emit_faces_kernel(int64_t nx, int64_t ny, int64_t nz,
                                  const uint8_t* __restrict__ cases,
                                  const uint32_t* __restrict__ tbase,
                                  const uint8_t* __restrict__ mask,
                                  const uint32_t* __restrict__ vbase, int64_t* __restrict__ faces) {
    const int64_t cy = ny - 1, cz = nz - 1;
    GRID_STRIDE(c, (nx - 1) * cy * cz) {
        const int cs = cases[c];
        if (!cs) continue;
        const int64_t k = c % cz, j = (c / cz) % cy, i = c / (cy * cz);
        const int8_t* t = c_tris + cs * kMaxTrianglesPerCube * 3;
        int64_t* out = faces + (int64_t)tbase[c] * 3;
        const int nq = c_ntri[cs] * 3;
        for (int q = 0; q < nq; ++q) {
            int di, dj, dk, d;
            hp_edge_owner(t[q], di, dj, dk, d);
            const int64_t p = ((i + di) * ny + (j + dj)) * nz + (k + dk);
            out[q] = (int64_t)vbase[p] + __popc(mask[p] & ((1u << d) - 1u));
        }
    }
}

__global__ void face_normals_kernel(const float* __restrict__ verts, const int64_t* __restrict__ faces,
                                    int64_t nf, double* __restrict__ acc) {
    GRID_STRIDE(f, nf) {
        const int64_t a = faces[f * 3], b = faces[f * 3 + 1], c = faces[f * 3 + 2];
        const float* pa = verts + a * 3;
        const float* pb = verts + b * 3;
        const float* pc = verts + c * 3;
        const double u0 = (double)pb[0] - pa[0], u1 = (double)pb[1] - pa[1], u2 = (double)pb[2] - pa[2];
        const double v0 = (double)pc[0] - pa[0], v1 = (double)pc[1] - pa[1], v2 = (double)pc[2] - pa[2];
        const double n[3] = {u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0};
        for (int q = 0; q < 3; ++q) {
            atomicAdd(acc + a * 3 + q, n[q]);
            atomicAdd(acc + b * 3 + q, n[q]);
            atomicAdd(acc + c * 3 + q, n[q]);
        }
    }
}

__global__ void normalize_kernel(const double* __restrict__ acc, int64_t nv, float* __restrict__ normals) {
    GRID_STRIDE(v, nv) {
        const double* n = acc + v * 3;
        const double len = sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
        for (int q = 0; q < 3; ++q) normals[v * 3 + q] = len > 0 ? (float)(n[q] / len) : 0.0f;
    }
}

}  // namespace

// The volume is already on the device (d_vol, C order); only the mesh is
// copied back to the host.
static Mesh marching_cubes_on_device(const float* d_vol, int64_t nx, int64_t ny, int64_t nz,
                                     float level, const double spacing[3], const double origin[3]) {
    Mesh mesh;
    const int64_t np = nx * ny * nz;
    const int64_t ncube = (nx - 1) * (ny - 1) * (nz - 1);
    upload_table();

    DeviceBuffer<int> d_flag(1);
    d_flag.zero();
    any_unknown_kernel<<<blocks_for(np, kThreads), kThreads>>>(d_vol, np, d_flag.get());
    check(cudaGetLastError(), "any_unknown_kernel launch");
    int unk_flag = 0;
    d_flag.download(&unk_flag, 1);
    const bool unk = unk_flag != 0;

    // Vertices.
    DeviceBuffer<uint8_t> d_mask(static_cast<size_t>(np));
    DeviceBuffer<uint32_t> d_vcount(static_cast<size_t>(np)), d_vbase(static_cast<size_t>(np));
    edge_mask_kernel<<<blocks_for(np, kThreads), kThreads>>>(d_vol, nx, ny, nz, level, unk,
                                                             d_mask.get(), d_vcount.get());
    check(cudaGetLastError(), "edge_mask_kernel launch");
    const uint32_t nv = exclusive_scan(d_vcount.get(), d_vbase.get(), np);
    DeviceBuffer<float> d_verts(static_cast<size_t>(nv) * 3), d_values(nv);
    if (nv) {
        emit_vertices_kernel<<<blocks_for(np, kThreads), kThreads>>>(
            d_vol, nx, ny, nz, level, d_mask.get(), d_vbase.get(), spacing[0], spacing[1],
            spacing[2], origin[0], origin[1], origin[2], d_verts.get(), d_values.get());
        check(cudaGetLastError(), "emit_vertices_kernel launch");
    }

    // Faces (the vertex count buffer is reused for the per-cube counts).
    DeviceBuffer<uint8_t> d_cases(static_cast<size_t>(ncube));
    DeviceBuffer<uint32_t>& d_tcount = d_vcount;
    DeviceBuffer<uint32_t> d_tbase(static_cast<size_t>(ncube));
    cube_count_kernel<<<blocks_for(ncube, kThreads), kThreads>>>(d_vol, nx, ny, nz, level, unk,
                                                                 d_cases.get(), d_tcount.get());
    check(cudaGetLastError(), "cube_count_kernel launch");
    const uint32_t nf = exclusive_scan(d_tcount.get(), d_tbase.get(), ncube);
    DeviceBuffer<int64_t> d_faces(static_cast<size_t>(nf) * 3);
    DeviceBuffer<float> d_normals(static_cast<size_t>(nv) * 3);
    if (nf) {
        emit_faces_kernel<<<blocks_for(ncube, kThreads), kThreads>>>(
            nx, ny, nz, d_cases.get(), d_tbase.get(), d_mask.get(), d_vbase.get(), d_faces.get());
        check(cudaGetLastError(), "emit_faces_kernel launch");
    }
    if (nv) {
        DeviceBuffer<double> d_acc(static_cast<size_t>(nv) * 3);
        d_acc.zero();
        if (nf) {
            face_normals_kernel<<<blocks_for(nf, kThreads), kThreads>>>(d_verts.get(), d_faces.get(),
                                                                        nf, d_acc.get());
            check(cudaGetLastError(), "face_normals_kernel launch");
        }
        normalize_kernel<<<blocks_for(nv, kThreads), kThreads>>>(d_acc.get(), nv, d_normals.get());
        check(cudaGetLastError(), "normalize_kernel launch");
    }
    check(cudaDeviceSynchronize(), "marching_cubes");

    mesh.vertices.resize(static_cast<size_t>(nv) * 3);
    mesh.values.resize(nv);
    mesh.normals.resize(static_cast<size_t>(nv) * 3);
    mesh.faces.resize(static_cast<size_t>(nf) * 3);
    d_verts.download(mesh.vertices.data(), mesh.vertices.size());
    d_values.download(mesh.values.data(), mesh.values.size());
    d_normals.download(mesh.normals.data(), mesh.normals.size());
    d_faces.download(mesh.faces.data(), mesh.faces.size());
    return mesh;
}

Mesh marching_cubes(const float* vol, int64_t nx, int64_t ny, int64_t nz, float level,
                    const double spacing[3], const double origin[3]) {
    if (nx < 2 || ny < 2 || nz < 2) return Mesh();
    const int64_t np = nx * ny * nz;
    check_scan_size(np, "marching_cubes");
    DeviceBuffer<float> d_vol(static_cast<size_t>(np));
    d_vol.upload(vol, static_cast<size_t>(np));
    return marching_cubes_on_device(d_vol.get(), nx, ny, nz, level, spacing, origin);
}

Mesh marching_cubes_device(const float* d_vol, int64_t nx, int64_t ny, int64_t nz, float level,
                           const double spacing[3], const double origin[3]) {
    if (nx < 2 || ny < 2 || nz < 2) return Mesh();
    check_scan_size(nx * ny * nz, "marching_cubes_device");
    cudaPointerAttributes attr;
    check(cudaPointerGetAttributes(&attr, d_vol), "marching_cubes_device: cudaPointerGetAttributes");
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        throw std::invalid_argument(
            "marching_cubes_device: the volume pointer is not CUDA device memory; "
            "pass a CUDA tensor's data_ptr() or use marching_cubes() for host arrays");
    int current = -1;
    check(cudaGetDevice(&current), "marching_cubes_device: cudaGetDevice");
    if (attr.type == cudaMemoryTypeDevice && attr.device != current)
        throw std::invalid_argument(
            "marching_cubes_device: the volume lives on CUDA device " + std::to_string(attr.device) +
            " but the current device is " + std::to_string(current) + "; make it current first");
    return marching_cubes_on_device(d_vol, nx, ny, nz, level, spacing, origin);
}

}  // namespace cuda
}  // namespace holopart
