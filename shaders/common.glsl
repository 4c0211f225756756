// Helpers shared by every compute shader.
#ifndef PALM_COMMON_GLSL
#define PALM_COMMON_GLSL

// maxComputeWorkGroupCount[0] is only guaranteed to be 65535, so row-parallel kernels are
// dispatched as a 2D grid (x, y) that covers the rows; this flattens it back to a row index.
uint flat_workgroup_id() {
    return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
}

#endif
