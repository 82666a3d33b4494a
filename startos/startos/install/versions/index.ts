export { v_0_1_0_0 as current } from './v0.1.0.0'
export const other = []
