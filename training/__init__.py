"""safefql.training"""
