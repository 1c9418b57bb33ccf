// Generates the 256-case marching-cubes table from a rule instead of a pasted
// table.
//
// Rule: on every cube face, walk the four corners counter-clockwise as seen
// from outside the cube. Each crossed face edge where the walk goes from an
// outside corner to an inside one ("entry") is joined to the next crossing
// along the walk (an "exit"); the segment passes by the inside corners between
// them. On an ambiguous face (inside corners on one diagonal) this separates the
// two inside corners. The decision depends only on the face's own corners, so
// the two cubes sharing a face always draw the same segments (in opposite
// directions), which makes the surface watertight and consistently oriented.
// The segments of the six faces chain into closed loops (each crossed cube edge
// is an entry on one of its two faces and an exit on the other); every loop is
// triangulated without diagonals between two points of the same cube face, so
// no triangle edge can be produced by the neighbouring cube as well.
#include <array>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "holopart/kernels.hpp"

namespace holopart {
namespace {

int corner_index(int x, int y, int z) { return (x << 2) | (y << 1) | z; }

int corner_coord(int c, int axis) { return (c >> (2 - axis)) & 1; }

// Cube edge joining two corners that differ along exactly one axis.
int edge_between(int c0, int c1) {
    const int diff = c0 ^ c1;
    const int axis = diff == 4 ? 0 : (diff == 2 ? 1 : 2);
    int others[2], n = 0;
    for (int a = 0; a < 3; ++a)
        if (a != axis) others[n++] = corner_coord(c0, a);
    return axis * 4 + ((others[0] << 1) | others[1]);
}

// The two faces (axis * 2 + side) an edge lies on.
std::array<int, 2> edge_faces(int e) {
    const int axis = e >> 2, u = (e >> 1) & 1, v = e & 1;
    int others[2], n = 0;
    for (int a = 0; a < 3; ++a)
        if (a != axis) others[n++] = a;
    return {others[0] * 2 + u, others[1] * 2 + v};
}

bool share_face(int e0, int e1) {
    const auto f0 = edge_faces(e0), f1 = edge_faces(e1);
    return f0[0] == f1[0] || f0[0] == f1[1] || f0[1] == f1[0] || f0[1] == f1[1];
}

// Corners of face (axis, side), counter-clockwise seen from outside the cube.
std::array<int, 4> face_corners(int axis, int side) {
    const int b = (axis + 1) % 3, c = (axis + 2) % 3;  // e_b x e_c = e_axis
    static const int ccw[4][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}};
    std::array<int, 4> out{};
    for (int m = 0; m < 4; ++m) {
        const int q = side ? m : (4 - m) % 4;  // reversed walk on the -axis face
        int xyz[3];
        xyz[axis] = side;
        xyz[b] = ccw[q][0];
        xyz[c] = ccw[q][1];
        out[m] = corner_index(xyz[0], xyz[1], xyz[2]);
    }
    return out;
}

// Triangulate the directed loop p[lo..hi] (closed by hi -> lo), appending
// triangles that follow the loop's direction. Returns false when every choice
// needs a forbidden diagonal.
bool triangulate(const std::vector<int>& p, int lo, int hi, std::vector<int>& out) {
    const int n = hi - lo + 1;
    if (n < 3) return true;
    for (int m = lo + 1; m < hi; ++m) {
        // Triangle (p[lo], p[m], p[hi]); new diagonals lo-m and m-hi.
        if (m != lo + 1 && share_face(p[lo], p[m])) continue;
        if (m != hi - 1 && share_face(p[m], p[hi])) continue;
        std::vector<int> trial;
        trial.push_back(p[lo]);
        trial.push_back(p[m]);
        trial.push_back(p[hi]);
        if (!triangulate(p, lo, m, trial)) continue;
        if (!triangulate(p, m, hi, trial)) continue;
        out.insert(out.end(), trial.begin(), trial.end());
        return true;
    }
    return false;
}

void build(McTable& t) {
    for (int cs = 0; cs < 256; ++cs) {
        auto inside = [cs](int c) { return (cs >> c) & 1; };
        int next[12];
        for (int e = 0; e < 12; ++e) next[e] = -1;
        for (int axis = 0; axis < 3; ++axis) {
            for (int side = 0; side < 2; ++side) {
                const auto fc = face_corners(axis, side);
                for (int m = 0; m < 4; ++m) {
                    const int a = fc[m], b = fc[(m + 1) % 4];
                    if (inside(a) || !inside(b)) continue;  // not an entry
                    for (int s = 1; s < 4; ++s) {
                        const int a2 = fc[(m + s) % 4], b2 = fc[(m + s + 1) % 4];
                        if (inside(a2) && !inside(b2)) {
                            next[edge_between(a, b)] = edge_between(a2, b2);
                            break;
                        }
                    }
                }
            }
        }
        std::vector<int> tris;
        bool seen[12] = {};
        for (int e0 = 0; e0 < 12; ++e0) {
            if (next[e0] < 0 || seen[e0]) continue;
            std::vector<int> loop;
            for (int e = e0; !seen[e]; e = next[e]) {
                if (next[e] < 0) throw std::logic_error("mc_table: open loop");
                seen[e] = true;
                loop.push_back(e);
            }
            if (!triangulate(loop, 0, static_cast<int>(loop.size()) - 1, tris))
                throw std::logic_error("mc_table: no valid triangulation");
        }
        const int nt = static_cast<int>(tris.size()) / 3;
        if (nt > kMaxTrianglesPerCube) throw std::logic_error("mc_table: too many triangles");
        t.ntri[cs] = static_cast<uint8_t>(nt);
        for (int q = 0; q < kMaxTrianglesPerCube * 3; ++q)
            t.tris[cs][q] = q < static_cast<int>(tris.size()) ? static_cast<int8_t>(tris[q]) : -1;
    }
}

}  // namespace

const McTable& mc_table() {
    static McTable table;
    static std::once_flag once;
    std::call_once(once, [] { build(table); });
    return table;
}

}  // namespace holopart
