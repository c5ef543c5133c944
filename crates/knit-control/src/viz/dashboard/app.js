// Knit dashboard
